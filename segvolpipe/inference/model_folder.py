"""Trained model folders: which exist, which one the user means, and loading their folds' checkpoints.

A model folder is ``results/DatasetXXX/{variant}__{configuration}`` (or ``results/Universal_*/...``) with
``plans.json`` and ``fold_k/checkpoint_{final,best,latest}.pt``; :func:`resolve_model_folder` picks one from
``-d``/``-c``/``--variant``/``-m`` (or the only one), :func:`load_fold_models` builds and loads its folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segvolpipe.errors import UserError
from segvolpipe.models.registry import VARIANTS, load_model_state
from segvolpipe.models.spec import MODALITIES, ModelSpec
from segvolpipe.paths import list_datasets, resolve_dataset, results_root
from segvolpipe.planning.plans import Plans
from segvolpipe.training.universal import UNIVERSAL_PREFIX

CHECKPOINTS = ("final", "best", "latest")


def trained_folds(folder: Path, checkpoint: str = "final") -> list[str]:
    """Folds of a model folder that have ``checkpoint_{checkpoint}.pt`` (0–4 first, then ``all``)."""
    found = [p.name.removeprefix("fold_") for p in folder.glob("fold_*") if (p / f"checkpoint_{checkpoint}.pt").is_file()]
    return sorted(found, key=lambda f: (f == "all", f))


def trained_models(root: Path | None = None) -> list[Path]:
    """Every ``{variant}__{configuration}`` folder under the results root (``DatasetXXX_*`` and ``Universal_*``)
    with at least one trained fold."""
    root = root or results_root()
    out = []
    universal = sorted(p.name for p in root.glob(f"{UNIVERSAL_PREFIX}*") if p.is_dir()) if root.is_dir() else []
    for dataset in [*list_datasets(root), *universal]:
        for folder in sorted((root / dataset).glob("*__*")):
            if folder.is_dir() and (folder / "plans.json").is_file() and trained_folds(folder):
                out.append(folder)
    return out


def resolve_model_folder(dataset: str | None = None, model: str | None = None, configuration: str | None = None,
                         variant: str | None = None) -> Path:
    """The model folder the user means (``-m`` wins; ``-d`` with optional ``-c``/``--variant``; else the only one).

    Raises:
        UserError: nothing trained, or several candidates (listed, with the option that picks one).
    """
    if model is not None:
        folder = Path(model)
        if not (folder / "plans.json").is_file():
            raise UserError("not a trained model folder (no plans.json; expected results/DatasetXXX/"
                            "{variant}__{configuration})", folder)
        return folder
    root = results_root()
    candidates = trained = trained_models(root)
    if dataset is not None:
        candidates, missing = [], None
        try:
            name = resolve_dataset(dataset, root)
            candidates = [c for c in trained if c.parent.name == name]
        except UserError as exc:
            missing = exc
        if not candidates:  # no model of its own: a universal model trained on it (which preprocesses as it)
            candidates = [c for c in trained if c.parent.name.startswith(UNIVERSAL_PREFIX) and _knows(c, dataset)]
        if not candidates and missing is not None:
            raise missing
    if configuration is not None:
        candidates = [c for c in candidates if c.name.split("__", 1)[1] == configuration]
    if variant is not None:
        candidates = [c for c in candidates if c.name.split("__", 1)[0] == variant]
    if not candidates:
        asked = ", ".join(f"{flag} {value}" for flag, value in (("-d", dataset), ("-c", configuration),
                                                                ("--variant", variant)) if value is not None)
        listing = ", ".join(str(c.relative_to(root)) for c in trained) or "none"
        raise UserError(f"no trained model{f' for {asked}' if asked else ''} (trained: {listing}): "
                        "run 'segvol train' first", root)
    if len(candidates) > 1:
        listing = ", ".join(str(c.relative_to(root)) for c in candidates)
        raise UserError(f"several trained models ({listing}): choose one with -m FOLDER, or -d/-c/--variant")
    return candidates[0]


def _knows(folder: Path, dataset: str) -> bool:
    """Whether a model folder lists ``dataset`` under ``datasets/`` (a universal model trained on it)."""
    try:
        resolve_dataset(dataset, folder / "datasets")
        return True
    except UserError:
        return False


@dataclass(frozen=True)
class FoldModel:
    fold: str
    path: Path
    model: nn.Module
    #: the axes its training mirrored (what mirroring test-time augmentation may flip); all three for
    #: checkpoints written before the plans chose them
    mirror_axes: tuple[int, ...] = (0, 1, 2)


def load_fold_models(folder: Path, folds: Sequence[str] | None, checkpoint: str,
                     device: torch.device) -> tuple[ModelSpec, list[FoldModel]]:
    """Build and load each fold's model (weights only); every fold must be the same model."""
    from segvolpipe.models.registry import build_model
    from segvolpipe.training.checkpoint import check_same_spec, load_checkpoint

    if checkpoint not in CHECKPOINTS:
        raise UserError(f"unknown --checkpoint {checkpoint!r} ({', '.join(CHECKPOINTS)})")
    available = trained_folds(folder, checkpoint)
    chosen = list(folds) if folds else [f for f in available if f != "all"] or available
    missing = [f for f in chosen if f not in available]
    if missing or not chosen:
        have = ", ".join(available) or "none"
        raise UserError(f"no checkpoint_{checkpoint}.pt for fold {', '.join(missing) or '?'} (trained folds: {have})",
                        folder)
    spec: ModelSpec | None = None
    out = []
    for fold in chosen:
        path = folder / f"fold_{fold}" / f"checkpoint_{checkpoint}.pt"
        payload = load_checkpoint(path)
        if spec is None:
            spec = ModelSpec.from_json(payload["spec"])
        else:
            check_same_spec(payload, spec.to_json(), path)
        features = None
        if spec.variant != "unet" and spec.text.tower != "learned":
            features = torch.zeros(len(MODALITIES), len(spec.vocabulary), spec.text.dim)  # the buffer is loaded
        model = build_model(spec, features)
        try:
            load_model_state(model, payload["model"])
        except RuntimeError as exc:
            raise UserError(f"checkpoint does not fit its own model ({str(exc).splitlines()[0]})", path) from None
        sampling = payload["config"].get("sampling") or {}
        out.append(FoldModel(fold, path, model.to(device).eval(), tuple(sampling.get("mirror_axes", (0, 1, 2)))))
    assert spec is not None
    return spec, out


def check_fits_folder(folder: Path, plans: Plans, spec: ModelSpec, path: Path) -> None:
    """A checkpoint of another configuration or variant than its folder's (a file copied into the wrong
    ``{variant}__{configuration}`` folder) is refused by name instead of predicting with other settings; a folder
    renamed to anything else is not judged by its name."""
    made_for = spec.run_name
    if spec.configuration not in plans.configurations:
        raise UserError(f"checkpoint was made for configuration {spec.configuration!r}, which the folder's plans.json "
                        f"does not have ({', '.join(plans.configurations)})", path)
    variant, _, configuration = folder.name.partition("__")
    if variant in VARIANTS and configuration in plans.configurations and folder.name != made_for:
        raise UserError(f"checkpoint was made for {made_for} but lies in {folder.name}", path)
