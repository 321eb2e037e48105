"""Errors of the control plane, one tree with one root.

    ControlPlaneError
    ├── TritonError                 the local or remote Triton server
    │   ├── TritonBinaryMissing     nvidia-pytriton (tritonserver) is not installed
    │   ├── PortInUse               a port asked for is taken
    │   ├── RepositoryMissing       --repo points nowhere
    │   ├── TritonStartFailed       the server died or never became ready
    │   ├── TritonNotRunning        stop/status found no server
    │   ├── TritonUnreachable       no Triton answered at the address (refused, no route, wrong port)
    │   ├── TritonLoadFailed        Triton refused or failed a load (its reason is in the message)
    │   ├── TritonUnloadFailed      Triton answered but refused an unload (its reason is in the message)
    │   └── TritonAccessDenied      the repository API wants a key: none was sent, or the wrong one
    ├── ConfigError                 shepherd.yaml or a command-line setting is wrong
    ├── StoreError                  the history database (unreachable, refused a write)
    │   └── InvalidTransition       a lifecycle move the rules do not allow
    ├── LeaderError                 another process leads this history database, or its leader lock cannot be had
    ├── EvidenceError               impossible probe figures handed to the judge
    │   └── BrokenGoldenSet         a version's golden set cannot be read (or is too large)
    ├── AlertError                  a malformed alert event (delivery failures are never raised)
    ├── FleetError                  the fleet of Triton replicas
    │   ├── FleetUnresolved         the fleet's DNS name resolved to nothing, or the lookup failed
    │   ├── FleetToolMissing        HAProxy or Prometheus (the local fleet's parts) is not installed
    │   ├── FleetStartFailed        a part of the local fleet died or never became ready
    │   ├── FleetNotRunning         `fleet status` / `fleet down` found no local fleet
    │   └── ServingManifestError    the serving manifest (what every replica must serve) cannot be written or read
    └── ApiError                    shepherd's own HTTP API (`--server URL`): unreachable, or it failed the request
        └── ApiAccessDenied         the API refused the token: none, unknown or revoked (401), or its role is too low (403)

Every error carries the process exit code the CLI returns for it, so scripts can tell causes apart.
"""

from __future__ import annotations

from shepherd_errors import ShepherdError


class ControlPlaneError(ShepherdError):
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


class TritonLoadFailed(TritonError):
    exit_code = 17


class TritonUnloadFailed(TritonError):
    """Triton was reached and refused the unload; an unreachable Triton is TritonUnreachable instead."""

    exit_code = 18


class TritonAccessDenied(TritonError):
    """Triton's model-repository API is restricted by a key and refused the call (no key, or a wrong one).

    Never a failed version: the reconciler must not mark a version failed because shepherd lacked the key.
    """

    exit_code = 19


class ConfigError(ControlPlaneError):
    exit_code = 20


class StoreError(ControlPlaneError):
    """The SQL history could not be read or written (the message names the URL, password masked, and the cause)."""

    exit_code = 21


class InvalidTransition(StoreError):
    """A version was asked to move to a state its lifecycle does not allow from where it is."""

    exit_code = 22


class LeaderError(ControlPlaneError):
    """Only the holder of a history database's leader lock acts (control_plane/leader.py).

    Raised when another process leads (`shepherd tick` while a `shepherd run` leads), when the lock
    cannot be tried (its connection failed, the lock file cannot be opened, a database kind without a
    lock), and the exit code of a `shepherd run` that lost the lock with a job still running.
    """

    exit_code = 23


class EvidenceError(ControlPlaneError):
    """The judge was handed impossible evidence (more errors than requests, negative or NaN latencies)."""

    exit_code = 25


class BrokenGoldenSet(EvidenceError):
    """A version's golden set cannot be read (a garbage `golden.npz`, one over the size limit); its preflight rejects it."""

    exit_code = 27


class AlertError(ControlPlaneError):
    """An alert was built wrong (unknown event, severity or webhook format); sending one never raises."""

    exit_code = 26


class FleetError(ControlPlaneError):
    """Something about the fleet of Triton replicas as a whole (one replica's fault is a TritonError)."""

    exit_code = 60


class FleetUnresolved(FleetError):
    """The fleet's DNS name has no A/AAAA record, or the DNS server did not answer."""

    exit_code = 61


class FleetToolMissing(FleetError):
    """HAProxy or Prometheus, which `shepherd fleet up` runs, is not installed (see the README)."""

    exit_code = 62


class FleetStartFailed(FleetError):
    """A process of the local fleet died during start or never became ready."""

    exit_code = 63


class FleetNotRunning(FleetError):
    """`shepherd fleet status` or `fleet down` found no local fleet at the state file."""

    exit_code = 64


class ServingManifestError(FleetError):
    """The serving manifest (control_plane/serving_manifest.py) cannot be written, or is not one.

    A pass that cannot write it reports this and goes on; a readiness check that cannot read it
    fails open (ready when Triton is), so a control-plane fault never takes a healthy fleet out.
    """

    exit_code = 65


class ApiError(ControlPlaneError):
    """`shepherd promote|rollback|pin --server URL` could not get an answer from the API (or an unexpected one).

    An error the server met while acting (an unknown version, a refused transition) comes back with
    the exit code the same command would have returned run locally, not this one.
    """

    exit_code = 70


class ApiAccessDenied(ApiError):
    """The API refused the token: none was given (SHEPHERD_TOKEN), it is unknown or revoked (HTTP 401),
    or its role does not allow the request (HTTP 403)."""

    exit_code = 71
