"""Bring the local fleet up and down, and kill or restart one replica of it.

`up` is all or nothing: it checks everything it can before starting anything (tools, the server
binary, the repository, free ports, no fleet already at the state directory), then starts the
replicas with their readiness checks (in parallel: each is ready in well under 2 s here), HAProxy
and Prometheus, and waits until HAProxy's view agrees with every check (a replica that already
serves the fleet's models, or that no serving manifest asks anything of, in rotation on both
protocols, with a request through the load balancer reaching it; one that waits for shepherd to
load the manifest's models, out) and Prometheus has scraped every replica once. Whatever fails or
is interrupted half way, every process this call started is stopped before the error goes up, so
a failed start leaves nothing running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import requests

from control_plane import local_triton
from control_plane.errors import (
    ConfigError,
    FleetError,
    FleetNotRunning,
    FleetStartFailed,
    PortInUse,
    RepositoryMissing,
    TritonNotRunning,
    TritonStartFailed,
)
from control_plane.fleet import MetricsSource, fleet_file_text
from control_plane.local_fleet import haproxy, prometheus, sidecar
from control_plane.local_fleet.processes import (
    find_tools,
    owned,
    signal_group,
    spawn,
    start_failed,
    stop_groups,
    wait_groups_gone,
    wait_until,
)
from control_plane.local_fleet.state import (
    FleetPorts,
    FleetState,
    PartRecord,
    ReplicaRecord,
    forget_state,
    read_state,
    write_state,
)

MAX_REPLICAS = 16
# Triton's default "strict readiness" answers 400 on /v2/health/ready while any model is loading, so a
# replica loading a canary would drop out of HAProxy's rotation for the 1-2 s of the load (and a load on
# every replica at once left no replica at all: seen here, 503 for every request). Without it, ready
# means the server runs and is not shutting down; which versions a replica serves is the control
# plane's business (the repository index), not the load balancer's.
REPLICA_ARGS = ("--strict-readiness=false",)
TOOLS = ("haproxy", "prometheus")
# (part, None) when a part starts, (part, "ready in 1.9 s ...") when it is ready.
Progress = Callable[[str, str | None], None]


def _quiet(part: str, note: str | None) -> None:
    """The default progress: say nothing."""


def default_state_dir() -> Path:
    """`.shepherd/fleet` under the current directory: next to the project it serves, git-ignored."""
    return Path(".shepherd") / "fleet"


def replica_name(index: int) -> str:
    return f"r{index}"


def running_parts(state: FleetState) -> dict[str, int]:
    """The parts of a recorded fleet that still run, by name: their pids (= process groups)."""
    parts = {r.name: (r.pid, r.marker) for r in state.replicas}
    parts.update({f"{r.name} readiness": (r.readiness_pid, str(r.readiness_pid_file)) for r in state.replicas})
    parts["haproxy"] = (state.haproxy.pid, state.haproxy.marker)
    parts["prometheus"] = (state.prometheus.pid, state.prometheus.marker)
    return {name: pid for name, (pid, marker) in parts.items() if owned(pid, marker)}


def running_state(state_dir: Path) -> FleetState:
    """The fleet recorded at `state_dir` if any part of it runs; FleetNotRunning otherwise."""
    state_dir = Path(state_dir).resolve()
    state = read_state(state_dir)
    if state is None:
        raise FleetNotRunning(f"no local fleet recorded in {state_dir}; start one with `shepherd fleet up`")
    if not running_parts(state):
        raise FleetNotRunning(f"the local fleet recorded in {state_dir} no longer runs (no process of it is left)")
    return state


def up(
    repo: Path,
    *,
    replicas: int = 3,
    state_dir: Path | None = None,
    fleet_file: Path | None = None,
    base_port: int | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
    progress: Progress = _quiet,
) -> FleetState:
    """Start `replicas` tritonservers over `repo`, HAProxy and Prometheus; return once all are ready."""
    plan = _plan(repo, replicas, state_dir, fleet_file, base_port, api_key)
    started: list[int] = []  # process groups this call started, stopped again if anything fails
    try:
        # Prometheus first: it hands its first targets to the scrapers only at its discovery's 5 s
        # tick, so that wait runs while the replicas start (a first scrape may find one not up yet).
        scraper, scraper_process = _spawn_prometheus(plan, progress)
        started.append(scraper.pid)
        records = _start_replicas(plan, api_key, timeout, progress, started)
        balancer, balancer_process = _spawn_haproxy(plan, records, progress)
        started.append(balancer.pid)
        state = FleetState(
            state_dir=str(plan.state_dir),
            repo=str(plan.repo),
            fleet_file=str(plan.fleet_file),
            replicas=tuple(records),
            haproxy=balancer,
            prometheus=scraper,
            restricted=api_key is not None,
        )
        _wait(state, "haproxy", balancer_process, _balancer_ready, timeout, progress)
        _wait(state, "prometheus", scraper_process, _prometheus_ready, timeout, progress)
        _write_fleet_file(state)
        write_state(state)
    except BaseException:
        stop_groups(started)
        for index in range(replicas):  # local_triton's records of the replicas just stopped
            (plan.state_dir / replica_name(index) / "state.json").unlink(missing_ok=True)
        raise
    return state


@dataclass(frozen=True)
class _Plan:
    """What `up` will start, checked before anything starts."""

    repo: Path
    state_dir: Path
    fleet_file: Path
    ports: FleetPorts
    tools: dict[str, Path]


def _plan(
    repo: Path,
    replicas: int,
    state_dir: Path | None,
    fleet_file: Path | None,
    base_port: int | None,
    api_key: str | None,
) -> _Plan:
    """Every check that needs no process: counts, key, repository, tools, no fleet there yet, free ports."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigError(f"--replicas: expected 1 to {MAX_REPLICAS}, got {replicas}")
    if api_key is not None:
        local_triton.check_api_key(api_key)
    repo = Path(repo).resolve()
    if not repo.is_dir():
        raise RepositoryMissing(f"model repository not found: {repo}")
    tools = find_tools(TOOLS)
    local_triton.find_installation()
    state_dir = Path(state_dir or default_state_dir()).resolve()
    existing = read_state(state_dir)
    if existing is not None and running_parts(existing):
        raise FleetStartFailed(
            f"a local fleet already runs from {state_dir}: stop it with `shepherd fleet down --state-dir {state_dir}`"
        )
    needed = FleetPorts.count_for(replicas)
    if base_port is not None and not 0 < base_port <= 65536 - needed:
        raise ConfigError(f"--base-port: {base_port} leaves no room for {needed} ports below 65536")
    ports = FleetPorts.from_base(base_port, replicas) if base_port else FleetPorts.free(replicas)
    busy = [p for p in ports.all() if not local_triton.port_is_free(p)]
    if busy:
        raise PortInUse(f"port(s) already in use: {', '.join(map(str, busy))}")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FleetStartFailed(f"cannot create the state directory {state_dir}: {exc}") from exc
    return _Plan(repo, state_dir, Path(fleet_file or state_dir / "fleet.yaml").resolve(), ports, tools)


def _wait(
    state: FleetState,
    part: str,
    process: subprocess.Popen[bytes],
    ready: Callable[[FleetState], bool],
    timeout: float,
    progress: Progress,
) -> None:
    """Wait for one part; a replica that dies meanwhile fails the start at once, with its log."""
    begun = time.monotonic()

    def check() -> bool:
        for record in state.replicas:
            if not owned(record.pid, record.marker):
                raise start_failed(f"replica {record.name} exited during start", Path(record.log_file))
            if not sidecar.running(record):
                raise start_failed(f"the readiness check of {record.name} exited during start", record.readiness_log)
        return ready(state)

    log_file = Path(state.haproxy.log_file if part == "haproxy" else state.prometheus.log_file)
    wait_until(check, process=process, what=part, log_file=log_file, timeout=timeout)
    where = (
        f"grpc {state.balancer_grpc}, http {state.balancer_http}; {_in_rotation(state)}"
        if part == "haproxy"
        else f"{state.prometheus_url}, scraping {len(state.replicas)} replica(s)"
    )
    progress(part, f"ready ({time.monotonic() - begun:.1f} s): {where}")


def _start_replicas(
    plan: _Plan, api_key: str | None, timeout: float, progress: Progress, started: list[int]
) -> list[ReplicaRecord]:
    """Start every replica at once; each started one goes into `started` the moment it runs."""
    lock = threading.Lock()
    records: dict[str, ReplicaRecord] = {}

    def start_one(index: int) -> None:
        name = replica_name(index)
        replica_dir = plan.state_dir / name
        ports = plan.ports.replicas[index]
        progress(name, None)
        begun = time.monotonic()
        # The check first: its Python starts while the server does. Its record is the replica's, pid 0.
        planned = ReplicaRecord(
            name=name,
            pid=0,
            http_port=ports.http,
            grpc_port=ports.grpc,
            metrics_port=ports.metrics,
            state_dir=str(replica_dir),
            log_file=str(replica_dir / "tritonserver.log"),
            readiness_port=plan.ports.readiness[index],
        )
        check = sidecar.start(planned, plan.repo, api_key)
        with lock:
            started.append(check.pid)
        try:
            server = local_triton.start(
                plan.repo,
                ports=ports,
                state_dir=replica_dir,
                log_file=replica_dir / "tritonserver.log",
                timeout=timeout,
                extra_args=REPLICA_ARGS,
                api_key=api_key,
            )
        except TritonStartFailed as exc:
            raise FleetStartFailed(f"replica {name}: {exc}") from exc
        with lock:
            started.append(server.pid)
        record = replace(
            planned,
            pid=server.pid,
            state_dir=server.state_dir,
            log_file=server.log_file,
            readiness_pid=check.pid,
        )
        wait_until(
            lambda: sidecar.live(record),
            process=check,
            what=f"the readiness check of {name}",
            log_file=record.readiness_log,
            timeout=timeout,
        )
        with lock:
            records[name] = record
        progress(
            name,
            f"ready in {time.monotonic() - begun:.1f} s (pid {server.pid}): grpc {record.replica.grpc}, "
            f"readiness {record.readiness_url}",
        )

    count = len(plan.ports.replicas)
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="fleet-up") as pool:
        futures = [pool.submit(start_one, i) for i in range(count)]
        errors = [f.exception() for f in futures]  # waits for every start, failed or not
    failed = [e for e in errors if e is not None]
    if failed:
        raise failed[0]
    return [records[replica_name(i)] for i in range(count)]


def _spawn_haproxy(
    plan: _Plan, records: list[ReplicaRecord], progress: Progress
) -> tuple[PartRecord, subprocess.Popen[bytes]]:
    progress("haproxy", None)
    ports, binary = plan.ports, plan.tools["haproxy"]
    folder = plan.state_dir / "haproxy"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "haproxy.cfg"
    config.write_text(
        haproxy.config_text(
            records, grpc_port=ports.balancer_grpc, http_port=ports.balancer_http, stats_port=ports.balancer_stats
        )
    )
    haproxy.check_config(binary, config)
    log_file = folder / "haproxy.log"
    process = spawn(haproxy.command(binary, config), log_file)
    record = PartRecord(
        name="haproxy",
        pid=process.pid,
        config=str(config),
        log_file=str(log_file),
        ports={"grpc": ports.balancer_grpc, "http": ports.balancer_http, "stats": ports.balancer_stats},
    )
    return record, process


def _spawn_prometheus(plan: _Plan, progress: Progress) -> tuple[PartRecord, subprocess.Popen[bytes]]:
    progress("prometheus", None)
    ports, binary = plan.ports, plan.tools["prometheus"]
    folder = plan.state_dir / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(prometheus.config_text(ports.replicas))
    data_dir = folder / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    log_file = folder / "prometheus.log"
    process = spawn(prometheus.command(binary, config, data_dir, ports.prometheus), log_file)
    record = PartRecord(
        name="prometheus", pid=process.pid, config=str(config), log_file=str(log_file), ports={"web": ports.prometheus}
    )
    return record, process


def _balancer_ready(state: FleetState) -> bool:
    """HAProxy's view agrees with every replica's readiness check, and a health call through it works
    on both protocols when any replica is in rotation.

    A replica whose check says "not ready" only because it lacks models of the serving manifest (the
    repository was served by shepherd before) is fine: it is out of rotation until shepherd's next
    pass loads them. Any other "not ready" (Triton does not answer) is not.
    """
    servers = haproxy.server_states(state.stats_url)
    answers = {r.name: sidecar.answer(r) for r in state.replicas}
    if servers is None or any(a is None or not (a["ready"] or a.get("missing")) for a in answers.values()):
        return False
    sides = ("grpc", "http")
    serving = [r.name for r in state.replicas if answers[r.name]["ready"]]  # type: ignore[index]
    waiting = [r.name for r in state.replicas if r.name not in serving]
    if any(servers.get(name, {}).get(side) != "UP" for name in serving for side in sides):
        return False
    if any(not servers.get(name, {}).get(side, "").startswith("DOWN") for name in waiting for side in sides):
        return False
    if not serving:
        return True
    try:
        if not requests.get(f"http://{state.balancer_http}/v2/health/ready", timeout=1.0).ok:
            return False
    except requests.RequestException:
        return False
    return _grpc_ready(state.balancer_grpc)


def _in_rotation(state: FleetState) -> str:
    """A note for the progress line: how many replicas HAProxy sends requests to, and why not the others."""
    answers = {r.name: sidecar.answer(r) for r in state.replicas}
    waiting = {name: a.get("missing", []) for name, a in answers.items() if a is not None and not a["ready"]}
    if not waiting:
        return f"all {len(state.replicas)} replicas in rotation"
    return f"{len(state.replicas) - len(waiting)} of {len(state.replicas)} in rotation; " + "; ".join(
        f"{name} waits for shepherd to load {', '.join(missing)}" for name, missing in waiting.items()
    )


def _grpc_ready(address: str) -> bool:
    import tritonclient.grpc as grpcclient  # heavy import, only where a gRPC call is made
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(address)
        try:
            return bool(client.is_server_ready(client_timeout=1.0))
        finally:
            client.close()
    except InferenceServerException:
        return False


def _prometheus_ready(state: FleetState) -> bool:
    if not prometheus.is_ready(state.prometheus_url):
        return False
    targets = prometheus.targets_up(state.prometheus_url) or {}
    return all(targets.get(r.replica.metrics_instance) for r in state.replicas)


def _write_fleet_file(state: FleetState) -> None:
    path = Path(state.fleet_file)
    text = fleet_file_text(
        [r.replica for r in state.replicas],
        metrics=MetricsSource("prometheus", url=state.prometheus_url),
        load_balancer={"grpc": state.balancer_grpc, "http": state.balancer_http},
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as exc:
        raise FleetStartFailed(f"cannot write the fleet file {path}: {exc}") from exc


def down(state_dir: Path | None = None, *, timeout: float = 20.0) -> FleetState:
    """Stop every process of the fleet (Tritons with their Python stubs, HAProxy, Prometheus) at once."""
    state_dir = Path(state_dir or default_state_dir()).resolve()
    try:
        state = running_state(state_dir)
    except FleetNotRunning:
        forget_state(state_dir)  # a record of processes that are all gone helps nobody
        raise
    parts = running_parts(state)
    left = stop_groups(list(parts.values()), timeout=timeout)
    for record in state.replicas:
        (Path(record.state_dir) / "state.json").unlink(missing_ok=True)
        record.readiness_pid_file.unlink(missing_ok=True)  # the check removes it on SIGTERM; not on SIGKILL
    forget_state(state_dir)
    if left:
        raise FleetError(f"process group(s) {', '.join(map(str, left))} survived SIGKILL; see `ps -g`")
    return state


def kill_replica(state_dir: Path, name: str) -> ReplicaRecord:
    """SIGKILL one replica's process group (server and stubs), as a crash would; returns its record."""
    state = running_state(state_dir)
    record = _replica(state, name)
    if not owned(record.pid, record.marker):
        raise TritonNotRunning(f"replica {name} (pid {record.pid}) is not running")
    signal_group(record.pid, signal.SIGKILL)
    wait_groups_gone([record.pid], 5.0)
    return record


def restart_replica(state_dir: Path, name: str, *, api_key: str | None = None, timeout: float = 120.0) -> ReplicaRecord:
    """Start one replica again on its own ports (stopping it first if it still runs); it serves no model
    until someone loads one (explicit model-control mode), just like a restarted pod. Its readiness
    check keeps running (started again if it has died), so HAProxy takes the replica back only once
    it serves the serving manifest's models."""
    state = running_state(state_dir)
    record = _replica(state, name)
    if state.restricted and api_key is None:
        raise ConfigError(f"the fleet's repository API wants a key: restart {name} with the key it was started with")
    if owned(record.pid, record.marker):
        stop_groups([record.pid])
    try:
        server = local_triton.start(
            Path(state.repo),
            ports=record.ports,
            state_dir=Path(record.state_dir),
            log_file=Path(record.log_file),
            timeout=timeout,
            extra_args=REPLICA_ARGS,
            api_key=api_key,
        )
    except TritonStartFailed as exc:
        raise FleetStartFailed(f"replica {name}: {exc}") from exc
    restarted = replace(record, pid=server.pid)
    if record.readiness_port and not sidecar.running(record):
        restarted = replace(restarted, readiness_pid=sidecar.start(record, Path(state.repo), api_key).pid)
    write_state(state.with_replica(restarted))
    return restarted


def _replica(state: FleetState, name: str) -> ReplicaRecord:
    try:
        return state.replica(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
