"""Errors of the control plane, one tree with one root.

    ControlPlaneError
    ├── TritonError                 the local or remote Triton server
    │   ├── TritonBinaryMissing     nvidia-pytriton (tritonserver) is not installed
    │   ├── PortInUse               a port asked for is taken
    │   ├── RepositoryMissing       --repo points nowhere
    │   ├── TritonStartFailed       the server died or never became ready
    │   ├── TritonNotRunning        stop/status found no server
    │   └── TritonUnreachable       a running server did not answer
    └── ConfigError                 shepherd.yaml or a command-line setting is wrong

Every error carries the process exit code the CLI returns for it, so scripts can tell causes apart.
"""

from __future__ import annotations


class ControlPlaneError(Exception):
    exit_code = 1


class TritonError(ControlPlaneError):
    exit_code = 10


class TritonBinaryMissing(TritonError):
    exit_code = 11


class PortInUse(TritonError):
    exit_code = 12


class RepositoryMissing(TritonError):
    exit_code = 13


class TritonStartFailed(TritonError):
    exit_code = 14


class TritonNotRunning(TritonError):
    exit_code = 15


class TritonUnreachable(TritonError):
    exit_code = 16


class ConfigError(ControlPlaneError):
    exit_code = 20
