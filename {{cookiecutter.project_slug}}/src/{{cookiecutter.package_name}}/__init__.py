"""Reproducible 3D segmentation: DVC pipeline stages, MONAI models, MLflow provenance."""
