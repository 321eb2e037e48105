"""One way to turn figures into plain JSON, for the SQL history, the judge's verdicts and alerts.

Why one: numpy scalars from a percentile, NaN from an empty window, and tuples from frozen records
reach all three; cleaning them the same way everywhere means what an alert says, what the judge
decided and what the history stores are the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, datetime
from typing import Any


class NotJSON(TypeError):
    """A value has no JSON form; the message names where it was found.

    A TypeError (not a ControlPlaneError) because this module serves every package: the store turns
    it into a StoreError, the alert path passes `default=str` and never sees it.
    """


def plain_json(
    value: Any,
    *,
    where: str = "value",
    digits: int | None = None,
    default: Callable[[Any], Any] | None = None,
) -> Any:
    """`value` as plain JSON types: numpy scalars and arrays become numbers and lists, NaN and
    infinities None, tuples and sets lists, dict keys text, dates and datetimes ISO text.

    Why NaN becomes None: PostgreSQL's json type refuses NaN, and a NaN from an empty probe window
    must not make the window unstorable. `digits` rounds every float (`round(x, digits)`), as the
    judge does to keep its stored figures readable. Anything else raises NotJSON naming `where`
    (its path inside `value`), unless `default` is given: then `default(obj)` is used instead.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # a StrEnum becomes its plain text
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        number = float(value)
        if not math.isfinite(number):
            return None
        return round(number, digits) if digits is not None else number
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain_json(v, where=f"{where}.{k}", digits=digits, default=default) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_json(v, where=f"{where}[{i}]", digits=digits, default=default) for i, v in enumerate(value)]
    for method in ("tolist", "item"):  # numpy arrays, then numpy scalars (a 0-d array has both)
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                converted = convert()
            except (TypeError, ValueError):
                continue
            return plain_json(converted, where=where, digits=digits, default=default)
    if default is not None:
        return plain_json(default(value), where=where, digits=digits)
    raise NotJSON(f"{where} is not JSON: {type(value).__name__} {value!r:.80}")
