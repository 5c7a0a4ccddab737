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
from collections.abc import Sequence
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
from segvolpipe.log import logger, progress_bar
from segvolpipe.models.registry import build_model, load_model_state
from segvolpipe.models.spec import ModelSpec
from segvolpipe.paths import raw_root
from segvolpipe.planning.plans import Plans, load_plans
from segvolpipe.training.checkpoint import check_same_spec, load_checkpoint
from segvolpipe.training.config import TrainConfig
from segvolpipe.training.trainer import FoldFiles


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


def _outputs(config: TrainConfig, parts: Sequence[Any], validation: Path) -> list[tuple[Any, Path]]:
    """``(part, its validation folder)`` for each data part with validation cases."""
    return [(part, validation if config.universal is None else validation / part.dataset) for part in parts if part.val]


def validation_missing(config: TrainConfig, parts: Sequence[Any], validation: Path) -> bool:
    """Whether some data part's ``summary.json`` is missing under ``validation``."""
    return any(not (out / "summary.json").is_file() for _, out in _outputs(config, parts, validation))


def validate_fold(config: TrainConfig, parts: Sequence[Any], model: nn.Module, validation: Path, device: torch.device,
                  progress: bool = True) -> dict[str, Any]:
    """Validate a fold's model on each data part's validation cases (``parts``: the stage's ``_DataSplit``s:
    ``dataset``, ``pre``, ``val``); returns the summary (a universal model's: one per dataset)."""
    results: dict[str, Any] = {}
    for part, out in _outputs(config, parts, validation):
        summary = validate_cases(model, config.model, load_plans(part.pre / "plans.json"), part.val,
                                 part.pre / config.configuration, raw_root() / part.dataset, out, device,
                                 progress=progress)
        if config.universal is None:
            return summary
        results[part.dataset] = summary
    return results


def validate_trained_fold(config: TrainConfig, parts: Sequence[Any], files: FoldFiles,
                          progress: bool = True) -> tuple[int, int | None, float | None, dict[str, Any], float] | None:
    """A finished fold whose end-of-run validation is missing (it failed, or the run was stopped during it):
    validate ``checkpoint_final.pt`` now. Returns ``(epochs, best epoch, best EMA Dice, validation, seconds)``,
    or None when no summary is missing."""
    if not validation_missing(config, parts, files.validation):
        return None
    start = time.perf_counter()
    payload = load_checkpoint(files.final)
    check_same_spec(payload, config.model.to_json(), files.final)
    model = build_model(config.model)
    load_model_state(model, payload["model"])
    device = torch.device(config.device)
    logger.info("fold %s is trained but not validated: validating %s", config.fold, files.final)
    validation = validate_fold(config, parts, model.to(device), files.validation, device, progress)
    state = payload["state"]
    return state.epoch, state.best_epoch, state.best_ema_dice, validation, time.perf_counter() - start
