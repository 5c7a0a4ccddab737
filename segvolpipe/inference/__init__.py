"""Inference: sliding-window and zoom-out-zoom-in prediction, export to the original geometry."""
