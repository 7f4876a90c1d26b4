"""Inference on new scans with a trained model (`predict`)."""
