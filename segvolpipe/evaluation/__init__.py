"""Evaluation: overlap and surface metrics per case and class, nnU-Net-style summaries, rotation robustness
(rotate a volume about the patient's longitudinal axis, compare on a common field of view) and plots."""
