"""Evaluation outputs beyond the metrics: the overlays of the report."""
