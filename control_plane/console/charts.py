"""The rollout page's plot, as a Plotly figure (plain JSON: traces and layout), from the stored windows.

One figure, five rows sharing the time axis (UTC):

    decisions      a marker per decision (click: its checks and figures open beside the plot)
    latency        p50 and p95 of candidate and baseline per probe window (probes' own samples; Triton's
                   server-side figures as extra series, hidden until picked in the legend)
    error rate     errors / requests per window
    quality        golden-set quality of both sides, agreement of the candidate with the baseline
    traffic share  the candidate's share of client traffic per step (k/N; a blue-green cut-over is 100 %)

with the phases (preflight, each step) as shaded bands and a dotted line at each deciding decision.

Colours are the Okabe-Ito palette (told apart with the common colour-vision deficiencies), and every
pair of series also differs by line dash or marker symbol, so nothing is said by colour alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from control_plane.console.views import RolloutData

CANDIDATE = "#D55E00"  # vermillion
BASELINE = "#0072B2"  # blue
AGREEMENT = "#009E73"  # bluish green
SHARE = "#CC79A7"  # reddish purple
OUTCOME = {  # colour, marker symbol
    "promote": ("#009E73", "triangle-up"),
    "rollback": ("#000000", "x"),
    "reject": ("#E69F00", "diamond"),
    "fail": ("#E69F00", "diamond"),
    "wait": ("#8C8C8C", "circle-open"),
}
BANDS = ("rgba(0,0,0,0.045)", "rgba(0,114,178,0.07)")
ROWS = {  # y axis -> (domain, title)
    "y5": ((0.94, 1.0), "decisions"),
    "y": ((0.50, 0.90), "latency (ms)"),
    "y2": ((0.34, 0.46), "errors (%)"),
    "y3": ((0.17, 0.30), "quality"),
    "y4": ((0.0, 0.13), "share (%)"),
}


def x(value: datetime) -> str:
    """A time as Plotly reads it without any time-zone shift: naive UTC with milliseconds."""
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def _mid(start: datetime, end: datetime) -> datetime:
    return start + (end - start) / 2


def _line(
    name: str, xs: list[str], ys: list[Any], *, color: str, dash: str, symbol: str, yaxis: str, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "name": name,
        "x": xs,
        "y": ys,
        "yaxis": yaxis,
        "line": {"color": color, "dash": dash, "width": 2},
        "marker": {"color": color, "symbol": symbol, "size": 6},
        "connectgaps": False,
        **extra,
    }


def figure(data: RolloutData) -> dict[str, Any]:
    r = data.rollout
    sides = [
        (f"candidate v{r.candidate}", CANDIDATE, "circle", [w for w in data.windows if w.version == r.candidate]),
        (f"baseline v{r.stable}", BASELINE, "square", [w for w in data.windows if w.version != r.candidate]),
    ]
    traces: list[dict[str, Any]] = []
    for label, color, symbol, windows in sides:
        xs = [x(_mid(w.started_at, w.ended_at)) for w in windows]
        group = {"legendgroup": label}
        # The probes' p95 and p50 (shown), Triton's own p95 (one legend click away).
        for suffix, values, dash, shown in (
            ("p95", [w.client_p95_ms for w in windows], "solid", {}),
            ("p50", [w.client_p50_ms for w in windows], "dot", {}),
            ("p95 (Triton)", [w.p95_ms for w in windows], "dash", {"visible": "legendonly"}),
        ):
            traces.append(
                _line(
                    f"{label} {suffix}", xs, values, color=color, dash=dash, symbol=symbol, yaxis="y", **shown, **group
                )
            )
        rates = [(100.0 * w.errors / w.requests) if w.requests and w.errors is not None else None for w in windows]
        traces.append(
            _line(
                f"{label} errors",
                xs,
                rates,
                color=color,
                dash="solid",
                symbol=symbol,
                yaxis="y2",
                showlegend=False,
                **group,
            )
        )
        quality = [(xx, w.quality) for xx, w in zip(xs, windows, strict=True) if w.quality is not None]
        traces.append(
            _line(
                f"{label} quality",
                [q[0] for q in quality],
                [q[1] for q in quality],
                color=color,
                dash="solid",
                symbol=symbol,
                yaxis="y3",
                showlegend=False,
                **group,
            )
        )
    candidate = sides[0][3]
    agreed = [(x(_mid(w.started_at, w.ended_at)), w.agreement) for w in candidate if w.agreement is not None]
    traces.append(
        _line(
            "agreement with baseline",
            [a[0] for a in agreed],
            [a[1] for a in agreed],
            color=AGREEMENT,
            dash="dash",
            symbol="diamond",
            yaxis="y3",
        )
    )
    traces.append(_share_trace(data))
    traces.append(_decision_trace(data))
    return {"data": traces, "layout": _layout(data)}


def _end(data: RolloutData) -> datetime:
    ends = [w.ended_at for w in data.windows] + [d.at for d in data.decisions] + [data.rollout.started_at]
    if data.rollout.ended_at is not None:
        ends.append(data.rollout.ended_at)
    return max(ends)


def _share_trace(data: RolloutData) -> dict[str, Any]:
    xs, ys = [], []
    for step in data.steps:
        xs.append(x(step.started_at))
        ys.append(round(100 * step.share, 2))
    if data.rollout.ended_at is not None:
        xs.append(x(data.rollout.ended_at))
        ys.append(100.0 if data.rollout.outcome == "promoted" else 0.0)
    elif ys:
        xs.append(x(_end(data)))
        ys.append(ys[-1])
    return {
        "type": "scatter",
        "mode": "lines",
        "name": "candidate's traffic share",
        "x": xs,
        "y": ys,
        "yaxis": "y4",
        "line": {"color": SHARE, "shape": "hv", "width": 2},
        "fill": "tozeroy",
        "fillcolor": "rgba(204,121,167,0.18)",
    }


def _decision_trace(data: RolloutData) -> dict[str, Any]:
    ds = data.decisions
    return {
        "type": "scatter",
        "mode": "markers",
        "name": "decisions (click one)",
        "x": [x(d.at) for d in ds],
        "y": [0] * len(ds),
        "yaxis": "y5",
        "customdata": [d.id for d in ds],
        "text": [f"{d.outcome}: {(d.reason or '')[:90]}" for d in ds],
        "hovertemplate": "%{text}<extra>decision %{customdata}</extra>",
        "marker": {
            "size": 14,
            "color": [OUTCOME.get(d.outcome, OUTCOME["wait"])[0] for d in ds],
            "symbol": [OUTCOME.get(d.outcome, OUTCOME["wait"])[1] for d in ds],
            "line": {"width": 2, "color": [OUTCOME.get(d.outcome, OUTCOME["wait"])[0] for d in ds]},
        },
    }


def _bands(data: RolloutData) -> list[tuple[datetime, datetime, str]]:
    """(start, end, label) of each phase: preflight, then each step, until the rollout ended (or now)."""
    end = _end(data)
    bands = []
    first = data.steps[0].started_at if data.steps else data.rollout.started_at
    if data.preflight_at is not None and data.preflight_at < first:
        bands.append((data.preflight_at, data.canary_at or first, "preflight"))
    for i, step in enumerate(data.steps):
        stop = data.steps[i + 1].started_at if i + 1 < len(data.steps) else (data.rollout.ended_at or end)
        label = f"step {step.step}: {step.strategy} {round(100 * step.share)}%"
        bands.append((step.started_at, stop, label))
    return bands


def _layout(data: RolloutData) -> dict[str, Any]:
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, (start, stop, label) in enumerate(_bands(data)):
        shapes.append(
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": x(start),
                "x1": x(stop),
                "y0": 0,
                "y1": 1,
                "fillcolor": BANDS[i % 2],
                "line": {"width": 0},
                "layer": "below",
            }
        )
        annotations.append(
            {
                "xref": "x",
                "yref": "paper",
                "x": x(_mid(start, stop)),
                "y": 0.915,
                "text": label,
                "showarrow": False,
                "font": {"size": 11, "color": "#333"},
            }
        )
    for d in data.decisions:
        if d.outcome != "wait":
            color = OUTCOME.get(d.outcome, OUTCOME["wait"])[0]
            shapes.append(
                {
                    "type": "line",
                    "xref": "x",
                    "yref": "paper",
                    "x0": x(d.at),
                    "x1": x(d.at),
                    "y0": 0,
                    "y1": 1,
                    "line": {"color": color, "width": 1.5, "dash": "dot"},
                }
            )
    layout: dict[str, Any] = {
        "height": 720,
        "margin": {"l": 70, "r": 20, "t": 36, "b": 40},
        "hovermode": "closest",
        "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13, "color": "#1a1a1a"},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "legend": {"orientation": "h", "y": -0.06, "x": 0},
        "xaxis": {
            "type": "date",
            "showgrid": True,
            "gridcolor": "#e5e5e5",
            "anchor": "y4",
        },
        "shapes": shapes,
        "annotations": annotations,
    }
    for axis, (domain, title) in ROWS.items():
        key = "yaxis" if axis == "y" else f"yaxis{axis[1:]}"
        spec: dict[str, Any] = {
            "domain": list(domain),
            "title": {"text": title, "font": {"size": 12}},
            "gridcolor": "#e5e5e5",
            "zeroline": False,
            "fixedrange": True,
        }
        if axis == "y5":
            spec.update({"showticklabels": False, "showgrid": False, "range": [-1, 1]})
        if axis == "y4":
            spec.update({"range": [0, 105], "ticksuffix": "%"})
        if axis == "y3":
            spec["range"] = _unit_range(data)
        if axis == "y2":
            spec.update({"rangemode": "tozero", "ticksuffix": "%"})
        layout[key] = spec
    return layout


def _unit_range(data: RolloutData) -> list[float]:
    """Quality and agreement lie in [0, 1]: show from a little under the lowest value seen to just above 1."""
    seen = [v for w in data.windows for v in (w.quality, w.agreement) if v is not None]
    low = min(seen, default=0.0)
    return [max(0.0, round(low - max(0.02, 0.1 * (1 - low)), 3)), max(1.0, max(seen, default=1.0)) + 0.01]
