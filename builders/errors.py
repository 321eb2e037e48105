"""Errors of the builders, one tree with one root.

    BuilderError
    ├── RepositoryError            the Triton model repository on disk
    │   ├── InvalidModelName       a name Triton users would not use, or one that escapes the repo
    │   ├── BrokenConfig           a config.pbtxt that does not parse (the message names the file)
    │   ├── BrokenManifest         a manifest.json that is missing or does not parse
    │   └── VersionExists          a version folder is already there
    ├── SourceError                a checkpoint, tokenizer or factory that cannot be loaded
    ├── VerificationFailed         an export is over tolerance; nothing was published
    └── EngineUnavailable          TensorRT (or a GPU) is not present here

Each error carries the exit code the CLI returns for it.
"""

from __future__ import annotations

from shepherd_errors import ShepherdError


class BuilderError(ShepherdError):
    exit_code = 1


class RepositoryError(BuilderError):
    exit_code = 30


class InvalidModelName(RepositoryError, ValueError):
    exit_code = 31


class BrokenConfig(RepositoryError):
    exit_code = 32


class BrokenManifest(RepositoryError):
    exit_code = 33


class VersionExists(RepositoryError):
    exit_code = 34


class SourceError(BuilderError):
    exit_code = 40


class VerificationFailed(BuilderError):
    exit_code = 41


class EngineUnavailable(BuilderError):
    exit_code = 42


# Added with the builders' core (issue 3): ExportFailed, BuildFailed and BadOption sit under BuilderError.
class ExportFailed(BuilderError):
    """The PyTorch -> ONNX export (or its onnxruntime optimisation) did not produce a usable graph."""

    exit_code = 43


class BuildFailed(BuilderError):
    """A build step failed for a reason no narrower error names (the message names the step)."""

    exit_code = 44


class BadOption(BuilderError, ValueError):
    """A build option or tensor spec that cannot work (a negative batch size, an unknown dtype)."""

    exit_code = 2
