"""Metrics, summaries, rotation robustness and plots of the evaluation stage."""
