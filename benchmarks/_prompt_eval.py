"""Shared by the training probe and diagnostics: val crop Dice per class under one prompt combination."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from segvolpipe.training.losses import prompt_dice
from segvolpipe.training.prompts import PromptOptions, sample_prompts


def combo_dice(model: torch.nn.Module, batches: Sequence[dict], text_index: Sequence[int], names: Sequence[str],
               combo: str) -> dict[str, float]:
    """Mean Dice per class name over ``batches`` (crops with ``image``/``label``), every present class prompted
    with ``combo`` (no jitter, seeded per batch); NaN for a class never present."""
    per: dict[str, list[float]] = {n: [] for n in names}
    options = PromptOptions(max_prompts=len(names), box_jitter=0, pseudo_prompts=0, absent_text_prompts=0,
                            combos=(combo,))
    for i, batch in enumerate(batches):
        label = batch["label"]
        pb = sample_prompts(label, None, text_index, options, torch.Generator().manual_seed(i),
                            torch.zeros(label.shape[0], dtype=torch.long))
        with torch.no_grad():
            dice = prompt_dice(model(batch["image"], pb.prompts), pb.targets)
        for b in range(dice.shape[0]):
            for j in range(dice.shape[1]):
                c = int(pb.classes[b, j])
                if pb.weights[b, j] > 0 and c > 0 and not torch.isnan(dice[b, j]):
                    per[names[c - 1]].append(float(dice[b, j]))
    return {n: (float(np.mean(v)) if v else float("nan")) for n, v in per.items()}
