"""End-of-fold validation: predict the fold's validation cases, write them in the original geometry, score them.

Each validation case is read from the raw folder and predicted by the inference stage's
:class:`~segvolpipe.inference.predictor.Predictor` exactly as ``segvol predict`` would (the plans' mode:
zoom-out-zoom-in for promptable variants, sliding window for the U-Net), in the raw file's own grid, and
scored there against the raw label file. Promptable models are scored with text prompts for every class (what
``segvol predict`` does without prompts; these predictions are the ones written) and with box + text prompts
(boxes from the reference, as SegVol evaluates).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segvolpipe.evaluation.metrics import dice_scores
from segvolpipe.inference.predictor import Predictor
from segvolpipe.inference.prompts import reference_targets
from segvolpipe.io.atomic import read_json, write_json
from segvolpipe.io.nifti import read_image, read_label, write_label
from segvolpipe.log import progress_bar
from segvolpipe.models.spec import ModelSpec
from segvolpipe.planning.plans import Plans


def _summary(per_case: dict[str, dict[int, float]], names: dict[int, str]) -> dict[str, Any]:
    means = {}
    for v, name in names.items():
        scores = [d[v] for d in per_case.values() if not np.isnan(d[v])]
        means[name] = float(np.mean(scores)) if scores else float("nan")
    finite = [m for m in means.values() if not np.isnan(m)]
    return {"mean": means, "foreground_mean": float(np.mean(finite)) if finite else float("nan"),
            "per_case": {c: {names[v]: s for v, s in d.items()} for c, d in per_case.items()}}


def validate_cases(model: nn.Module, spec: ModelSpec, plans: Plans, cases: list[str], preprocessed: Path, raw: Path,
                   out: Path, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Predict the raw validation cases as ``segvol predict`` does (the plans' mode), write ``out/{case}.nii.gz``
    and ``out/summary.json``; returns the summary."""
    predictor = Predictor.for_model(model, spec, plans, device)
    values = list(predictor.labels)
    names = predictor.labels
    kinds = ("unet",) if not predictor.promptable else ("text", "box+text")
    scores: dict[str, dict[str, dict[int, float]]] = {kind: {} for kind in kinds}
    seconds = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("validation", total=len(cases))
        for case in cases:
            start = time.perf_counter()
            props = read_json(preprocessed / f"{case}.json")
            image, geometry = read_image([raw / "imagesTr" / name for name in props["images"]])
            reference, _ = read_label(raw / "labelsTr" / props["label"])
            for kind in kinds:
                targets = (reference_targets(names, reference, geometry.canonical_affine, kind) if kind == "box+text"
                           else predictor.targets())
                if not targets:
                    scores[kind][case] = dice_scores(np.zeros_like(reference), reference, values)
                    continue
                label = predictor.predict(image, geometry, targets, str(raw / "imagesTr" / props["images"][0])).label
                scores[kind][case] = dice_scores(label, reference, values)
                if kind in ("text", "unet"):
                    write_label(out / f"{case}.nii.gz", label, geometry)
            seconds[case] = time.perf_counter() - start
            bar.advance(task)
    summary = {kind: _summary(per_case, names) for kind, per_case in scores.items()}
    summary["grid"] = f"original (raw file geometry); segvol predict's {predictor.mode} mode"
    summary["seconds_per_case"] = seconds
    write_json(out / "summary.json", summary)
    return summary
