"""Python-based Triton backends that shepherd assembles into the local server's backend directory."""
