"""Training: data loading and augmentation, prompts, checkpoints and the training loop."""
