"""The root of shepherd's one error tree.

Every error shepherd raises on purpose descends from `ShepherdError`, so the CLI (and any caller)
can catch one class and read the exit code the error carries. Each part keeps its own branch, in
its own package, so `builders` and `probes` stay free of the control plane:

    ShepherdError                       exit 1
    ├── BuilderError                    builders/errors.py      (exit codes 2, 30-34, 40-44)
    ├── ProbeError                      probes/errors.py        (exit codes 50-54)
    └── ControlPlaneError               control_plane/errors.py (exit codes 10-18, 20-26)

Foreign errors (tritonclient, SQLAlchemy, requests, onnx, torch) are translated into this tree at
the boundary where they are caught, with `raise ... from exc`, so the cause stays in the traceback
for a debugger while the user sees one line.
"""

from __future__ import annotations


class ShepherdError(Exception):
    """Anything shepherd refuses or cannot do; `exit_code` is what the `shepherd` command returns."""

    exit_code = 1
