"""A trained model folder → predictions in the input's own geometry.

:class:`Predictor` loads a model folder's folds (found and loaded by :mod:`segvolpipe.inference.model_folder`) and
predicts one case held in memory: preprocess with the plans (crop, normalise, resample), predict every target
(``sliding`` or ``zoom``), average the folds' probabilities, map each target back to the file's grid and merge.
Memory stays bounded: targets are reverted and merged one at a time into a running best probability and label (two
full-volume maps), each only inside the box where it can win a voxel unless its probabilities are kept; the folds'
probabilities are summed at half precision on the (smaller) preprocessed grid only when there are several folds;
and the sliding mode predicts the targets in groups sized to a memory budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segvolpipe.errors import UserError, did_you_mean
from segvolpipe.inference.model_folder import FoldModel, check_fits_folder, load_fold_models
from segvolpipe.inference.prompts import Target, UserPrompt, locate
from segvolpipe.inference.sliding import predict_targets, predict_unet
from segvolpipe.inference.windows import TargetPrompt
from segvolpipe.inference.zoom import zoom_out_zoom_in
from segvolpipe.io.nifti import Geometry
from segvolpipe.log import logger
from segvolpipe.models.spec import CT, ModelSpec, normalise_label_name, plans_modality
from segvolpipe.planning.plans import ConfigurationPlan, Plans, load_plans
from segvolpipe.precision import use_bf16
from segvolpipe.preprocessing.case import (
    PreprocessSettings,
    preprocess_arrays,
    revert_soft_box,
    revert_to_canonical,
)

MODES = ("zoom", "sliding")
# Full-volume float32 maps the sliding mode may hold per group of targets (sum + weight per target).
SLIDING_BUDGET_BYTES = 1 << 30


@dataclass
class CasePrediction:
    """What predicting one case produced (canonical grid)."""

    label: np.ndarray
    geometry: Geometry
    values: list[int]
    names: list[str]
    probabilities: np.ndarray | None = None  # [P, Z, Y, X] float16 on the canonical grid, when asked
    zoom: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class Predictor:
    """Loaded fold models of one results folder and the settings to predict with them."""

    def __init__(self, folder: Path, folds: Sequence[str] | None = None, checkpoint: str = "final",
                 mode: str | None = None, tta: bool = False, step: float | None = None, device: str = "auto",
                 dataset: str | None = None) -> None:
        """``dataset``: for a universal model, the dataset the cases come from: its preprocessing and its classes
        (label values) are used; None: the folder's plans.json (a universal model's reference preprocessing and
        all its classes)."""
        from segvolpipe.training.stage import resolve_device
        from segvolpipe.training.universal import dataset_folder

        plans = load_plans((dataset_folder(folder, dataset) if dataset else folder) / "plans.json")
        torch_device = torch.device(resolve_device(device))
        spec, models = load_fold_models(folder, folds, checkpoint, torch_device)
        check_fits_folder(folder, plans, spec, models[0].path)
        self._configure(folder, plans, spec, models, mode, tta, step, torch_device)

    @classmethod
    def for_model(cls, model: nn.Module, spec: ModelSpec, plans: Plans, device: torch.device,
                  mode: str | None = None, folder: Path | None = None) -> Predictor:
        """A predictor around a model held in memory (the trainer's end-of-fold validation)."""
        self = cls.__new__(cls)
        self._configure(folder or Path("."), plans, spec, [FoldModel("-", Path("-"), model.eval())], mode, False, None,
                        device)
        return self

    def _configure(self, folder: Path, plans: Plans, spec: ModelSpec, models: list[FoldModel], mode: str | None,
                   tta: bool, step: float | None, device: torch.device) -> None:
        self.folder, self.plans, self.spec, self.models, self.device = folder, plans, spec, models, device
        self.conf: ConfigurationPlan = plans.configuration(spec.configuration)
        inference = self.conf.inference
        self.promptable = spec.variant != "unet"
        self.mode = mode or (inference.mode_promptable if self.promptable else inference.mode_unet)
        if self.mode not in MODES:
            raise UserError(f"unknown --mode {self.mode!r} ({', '.join(MODES)})")
        if self.mode == "zoom" and not self.promptable:
            raise UserError("zoom-out-zoom-in needs a promptable model; the unet variant predicts with --mode sliding")
        step = 1.0 - inference.overlap if step is None else step
        if not 0.0 < step <= 1.0:
            raise UserError(f"--step must lie in (0, 1] (a fraction of the window), got {step}")
        self.overlap = 1.0 - step
        # test-time mirroring flips only what every fold's training mirrored (the plans' mirror_axes)
        self.mirror_axes = tuple(a for a in range(3) if all(a in m.mirror_axes for m in models)) if tta else ()
        if tta and not self.mirror_axes:
            logger.warning("--tta: the model's training mirrored no axis (promptable variants do not, by default), "
                           "so there is nothing to mirror; predicting once")
        self.bf16 = use_bf16(device, self.conf.trainer.bf16_on_cuda, self.conf.trainer.bf16_on_cpu)
        self.threshold = inference.threshold
        self.settings = PreprocessSettings(self.conf.target_spacing, plans.normalization, self.conf.image_order,
                                           self.conf.label_order)
        self.modality = 0 if plans_modality(plans) == CT else 1  # the cases' (a universal model's datasets differ)

    @property
    def labels(self) -> dict[int, str]:
        return {v: n for v, n in self.plans.label_names.items() if v > 0}

    def describe(self) -> dict[str, Any]:
        return {"model": str(self.folder), "plans": self.plans.dataset, "variant": self.spec.variant,
                "configuration": self.spec.configuration,
                "folds": [m.fold for m in self.models], "checkpoints": [str(m.path) for m in self.models],
                "mode": self.mode, "step": 1.0 - self.overlap, "tta": bool(self.mirror_axes),
                "tta_axes": list(self.mirror_axes),
                "device": str(self.device)}

    # -- targets -------------------------------------------------------------------------------------------------
    def targets(self, classes: Sequence[str] | None = None, text: str | None = None,
                prompt: UserPrompt | None = None) -> list[Target]:
        """The targets of a call: every class (or ``classes``), or the one target ``text``/``prompt`` names."""
        by_name = {normalise_label_name(n): v for v, n in self.labels.items()}
        if not self.promptable and (text or (prompt is not None and prompt.spatial)):
            raise UserError("the unet variant segments its classes; --text, --box and --point need a promptable model")
        if text is not None or (prompt is not None and prompt.spatial):
            if text is not None:
                self._text_index(text)
            value = by_name.get(normalise_label_name(text), 1) if text is not None else 1
            return [Target(value, text or "target", text, prompt)]
        names = list(self.labels.values()) if not classes else list(classes)
        out = []
        for name in names:
            key = normalise_label_name(name)
            if key not in by_name:
                raise UserError(f"unknown class {name!r} (this model's classes: {', '.join(self.labels.values())})")
            out.append(Target(by_name[key], self.labels[by_name[key]], self.labels[by_name[key]]))
        return out

    def _text_index(self, text: str) -> int:
        index = self.spec.text_index(text)
        if index is None:
            hint = did_you_mean(normalise_label_name(text), self.spec.vocabulary)
            raise UserError(f"the model knows no target named {text!r} (it knows: "
                            f"{', '.join(self.spec.vocabulary)}){hint}")
        return index

    # -- one case ------------------------------------------------------------------------------------------------
    def predict(self, image: np.ndarray, geometry: Geometry, targets: Sequence[Target], path: str = "",
                probabilities: bool = False) -> CasePrediction:
        """Predict one case: ``image`` ``[C, Z, Y, X]`` canonical float32 as :func:`~segvolpipe.io.nifti.read_image`
        returns it."""
        if image.shape[0] != len(self.plans.channel_names):
            raise UserError(f"{image.shape[0]} channel(s), the model needs {len(self.plans.channel_names)} "
                            f"({', '.join(self.plans.channel_names)})", path)
        if not np.isfinite(image).all():
            raise UserError("the image holds NaN or infinite voxels", path)
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        data, _, props = preprocess_arrays(image, None, geometry, self.settings)
        seconds["preprocess"] = time.perf_counter() - start
        tensor = torch.from_numpy(data)
        values = [0, *self.labels] if not self.promptable else [t.value for t in targets]
        names = ["background", *self.labels.values()] if not self.promptable else [t.name for t in targets]
        prompts = [] if not self.promptable else [self._prompt(t, geometry, props, path) for t in targets]
        merger = _Merger(tuple(props["canonical_shape"]), len(values), probabilities,
                         self.threshold if self.promptable else None)
        zoom_info: dict[str, Any] = {}
        start = time.perf_counter()
        # Without the maps to keep, each is mapped back only where it can win a voxel: above the threshold
        # (promptable), or at 1/(outputs) of a softmax (whose winner is never below it) — the labels are the same.
        floor = self.threshold if self.promptable else 0.99 / len(values)
        for index, prob in self._probabilities(tensor, prompts, zoom_info, names):
            t0 = time.perf_counter()
            if probabilities or floor <= 0:
                merger.add(index, values[index], revert_to_canonical(prob[None].numpy(), props, False, 0.0)[0])
            elif (part := revert_soft_box(prob.numpy(), props, floor)) is not None:
                merger.add(index, values[index], part[1], part[0])
            seconds["export"] = seconds.get("export", 0.0) + time.perf_counter() - t0
        seconds["predict"] = time.perf_counter() - start - seconds.get("export", 0.0)
        label = merger.label()
        return CasePrediction(label, geometry, values, names, merger.probabilities, zoom_info, seconds)

    def _prompt(self, target: Target, geometry: Geometry, props: dict[str, Any], path: str) -> TargetPrompt:
        text_index = -1 if target.text is None else self._text_index(target.text)
        if target.user is not None and target.user.spatial:
            return locate(target.user, geometry, props, text_index, path)
        return TargetPrompt(text_index)

    def _probabilities(self, image: torch.Tensor, prompts: list[TargetPrompt], zoom_info: dict[str, Any],
                       names: list[str]) -> Iterator[tuple[int, torch.Tensor]]:
        """``(output index, probability on the preprocessed grid)`` for every output, folds averaged."""
        if len(self.models) == 1:
            yield from self._one_model(self.models[0].model, image, prompts, zoom_info, names)
            return
        sums: dict[int, torch.Tensor] = {}
        for fold in self.models:
            for index, prob in self._one_model(fold.model, image, prompts, zoom_info, names):
                half = prob.half()
                if index in sums:
                    sums[index] += half
                else:
                    sums[index] = half
        for index in sorted(sums):
            yield index, sums.pop(index).float() / len(self.models)

    def _one_model(self, model: nn.Module, image: torch.Tensor, prompts: list[TargetPrompt],
                   zoom_info: dict[str, Any], names: list[str]) -> Iterator[tuple[int, torch.Tensor]]:
        common = {"overlap": self.overlap, "device": self.device, "bf16": self.bf16, "mirror_axes": self.mirror_axes,
                  "sigma_scale": self.conf.inference.sigma_scale}
        if not self.promptable:
            probs = torch.softmax(predict_unet(model, image, **common), dim=0)
            for k in range(probs.shape[0]):
                yield k, probs[k]
            return
        if self.mode == "zoom":
            for t, logits, info in zoom_out_zoom_in(model, image, prompts, modality=self.modality,
                                                    threshold=self.threshold, **common):
                zoom_info.setdefault(names[t], []).append(
                    {"found": info.found, "roi": info.roi, "windows": info.windows})
                yield t, torch.sigmoid(logits)
            return
        voxels = math.prod(image.shape[1:])
        group = max(1, int(SLIDING_BUDGET_BYTES // max(1, 8 * voxels)))
        for first in range(0, len(prompts), group):
            chunk = prompts[first : first + group]
            logits = predict_targets(model, image, chunk, modality=self.modality, **common)
            for k in range(len(chunk)):
                yield first + k, torch.sigmoid(logits[k])
            del logits


class _Merger:
    """Running merge of per-output probability maps on the canonical grid: the most probable output wins, and with a
    ``threshold`` (promptable targets) voxels where no output passes it are background."""

    def __init__(self, shape: tuple[int, ...], outputs: int, keep: bool, threshold: float | None) -> None:
        self.best = np.full(shape, -1.0, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.uint16)
        self.threshold = threshold
        self.probabilities = np.zeros((outputs, *shape), dtype=np.float16) if keep else None

    def add(self, index: int, value: int, prob: np.ndarray, region: tuple[slice, ...] | None = None) -> None:
        """Merge output ``index`` (label ``value``): ``prob`` covers the whole grid, or only ``region`` of it."""
        region = region or (slice(None),) * self.best.ndim
        best = self.best[region]
        better = prob > best
        best[better] = prob[better]
        self.values[region][better] = value
        if self.probabilities is not None:
            self.probabilities[index][region] = prob

    def label(self) -> np.ndarray:
        if self.threshold is not None:
            self.values[self.best <= self.threshold] = 0
        return self.values


def volumes_ml(label: np.ndarray, values: Sequence[int], spacing: Sequence[float]) -> dict[int, float]:
    """Volume of each value in millilitres (voxel count × voxel volume)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(label.ravel(), minlength=max(values, default=0) + 1)
    return {int(v): float(counts[v]) * voxel_ml for v in values if v > 0}


def log_zoom(zoom: dict[str, Any]) -> None:
    missed = [n for n, runs in zoom.items() if not any(r["found"] for r in runs)]
    if missed:
        logger.info("zoom-out found nothing for %s: kept the coarse result", ", ".join(missed))
