"""The `onnxruntime` backend for the local Triton (model.py is copied into the backend directory, not imported)."""
