"""End-of-fold validation: predict the fold's validation cases, write them in the original geometry, score them.

Each validation case is predicted over its whole preprocessed volume (Gaussian sliding window), mapped back
to the raw file's grid (:func:`~segvolpipe.preprocessing.case.revert_to_canonical`, then the file's own
orientation and affine) and scored there against the raw label file. Promptable models are scored with
text prompts for every class (what ``segvol predict`` does without prompts; these predictions are the ones
written) and with box + text prompts (boxes from the reference, as SegVol evaluates).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segvolpipe.inference.sliding import TargetPrompt, merge_targets, predict_targets, predict_unet
from segvolpipe.io.atomic import read_json, write_json
from segvolpipe.io.nifti import Geometry, read_label, write_label
from segvolpipe.log import progress_bar
from segvolpipe.models.spec import CT
from segvolpipe.preprocessing.case import revert_to_canonical


def dice_per_class(pred: np.ndarray, ref: np.ndarray, values: list[int]) -> dict[int, float]:
    """Dice per class value; NaN when the class is absent from both (excluded from means, as nnU-Net)."""
    out = {}
    for v in values:
        p, r = pred == v, ref == v
        denom = int(p.sum()) + int(r.sum())
        out[v] = float("nan") if denom == 0 else 2.0 * int((p & r).sum()) / denom
    return out


def _boxes(label: np.ndarray, values: list[int]) -> dict[int, tuple[int, ...] | None]:
    boxes: dict[int, tuple[int, ...] | None] = {}
    for v in values:
        idx = np.argwhere(label == v)
        boxes[v] = None if idx.size == 0 else (*idx.min(0).tolist(), *idx.max(0).tolist())
    return boxes


def _summary(per_case: dict[str, dict[int, float]], names: dict[int, str]) -> dict[str, Any]:
    means = {}
    for v, name in names.items():
        scores = [d[v] for d in per_case.values() if not np.isnan(d[v])]
        means[name] = float(np.mean(scores)) if scores else float("nan")
    finite = [m for m in means.values() if not np.isnan(m)]
    return {"mean": means, "foreground_mean": float(np.mean(finite)) if finite else float("nan"),
            "per_case": {c: {names[v]: s for v, s in d.items()} for c, d in per_case.items()}}


def validate_cases(model: nn.Module, variant_is_unet: bool, labels: tuple[str, ...], text_index: list[int],
                   modality: str, cases: list[str], preprocessed: Path, raw: Path, out: Path,
                   device: torch.device, bf16: bool = False, progress: bool = True) -> dict[str, Any]:
    """Predict, write ``out/{case}.nii.gz`` and ``out/summary.json``; returns the summary."""
    model.eval()
    values = list(range(1, len(labels) + 1))
    names = dict(zip(values, labels, strict=True))
    scores: dict[str, dict[str, dict[int, float]]] = {"text": {}, "box+text": {}} if not variant_is_unet else {"unet": {}}
    seconds = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("validation", total=len(cases))
        for case in cases:
            start = time.perf_counter()
            props = read_json(preprocessed / f"{case}.json")
            image = torch.from_numpy(np.load(preprocessed / f"{case}.npy", allow_pickle=False))
            geometry = Geometry.from_json(props["geometry"])
            reference, _ = read_label(raw / "labelsTr" / props["label"])
            if variant_is_unet:
                logits = predict_unet(model, image, device=device, bf16=bf16)
                maps = {"unet": logits.argmax(0).numpy()}
            else:
                pre_label = np.load(preprocessed / f"{case}_seg.npy", allow_pickle=False)
                boxes = _boxes(pre_label, values)
                m = 0 if modality == CT else 1
                text_targets = [TargetPrompt(t) for t in text_index]
                maps = {"text": merge_targets(predict_targets(model, image, text_targets, device=device,
                                                              modality=m, bf16=bf16), values).numpy()}
                present = [v for v in values if boxes[v] is not None]
                if present:
                    box_targets = [TargetPrompt(text_index[v - 1], boxes[v]) for v in present]
                    logits = predict_targets(model, image, box_targets, device=device, modality=m, bf16=bf16)
                    maps["box+text"] = merge_targets(logits, present).numpy()
                else:
                    maps["box+text"] = np.zeros_like(maps["text"])
            for kind, pred in maps.items():
                canonical = revert_to_canonical(pred.astype(np.int16), props, is_label=True)
                scores[kind][case] = dice_per_class(canonical, reference, values)
                if kind in ("text", "unet"):
                    write_label(out / f"{case}.nii.gz", canonical, geometry)
            seconds[case] = time.perf_counter() - start
            bar.advance(task)
    summary = {kind: _summary(per_case, names) for kind, per_case in scores.items()}
    summary["grid"] = "original (raw file geometry); whole-volume Gaussian sliding window on the preprocessed grid"
    summary["seconds_per_case"] = seconds
    write_json(out / "summary.json", summary)
    return summary
