"""Reproducible 3D segmentation: DVC pipeline stages, MONAI models, MLflow provenance."""

# The import name, for `python -m ...` in messages and for the project's logger.
PACKAGE = __name__
