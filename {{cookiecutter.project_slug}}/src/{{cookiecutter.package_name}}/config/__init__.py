"""Configuration: load and check params.yaml, and build objects from it (the `_target_` guard)."""
