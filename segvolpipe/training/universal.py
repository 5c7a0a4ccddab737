"""Universal training: one promptable model over several datasets whose label sets differ (SegVol's central idea).

* **Label unification.** Label names are normalised (:func:`~segvolpipe.models.spec.normalise_label_name`:
  ``"Left_Kidney"`` = ``"left kidney"``); the model's vocabulary is the union, in order of first appearance
  (reference dataset first). A dataset labelling ``"kidney"`` and one labelling ``"left kidney"`` and
  ``"right kidney"`` are both usable: each trains the names it labels.
* **Missing labels.** Each batch comes from one dataset and is prompted only with that dataset's own classes
  (present ones with their masks, absent ones as text-only "not here" prompts). A class that only another
  dataset labels is never prompted on this one, so it is never taught as background where it is merely
  unlabelled (SegVol's "missing labels" problem).
* **Spacing.** Per-dataset preprocessing with a shared input size: every dataset keeps its own plans (target
  spacing, normalisation) and preprocessed arrays, and crops of the reference (first) dataset's model input size
  are drawn from each. Prediction preprocesses a case with the plans of the dataset it is said to come from
  (``segvol predict -m UNIVERSAL -d X``), a raw folder otherwise with the reference dataset's.
* **Sampling.** The dataset of each optimiser step is drawn in proportion to its weight, from a generator
  seeded by (seed, epoch, step): every rank of a distributed run draws the same dataset, and a resumed run the
  same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from segvolpipe.config import from_stamped_json, to_jsonable
from segvolpipe.errors import UserError
from segvolpipe.models.spec import (
    CT,
    ModelSpec,
    label_mirror,
    normalise_label_name,
    plans_modality,
    spec_from_plans,
)
from segvolpipe.planning.plans import Plans

UNIVERSAL_PREFIX = "Universal_"
_SCHEDULE_SALT = 9173


@dataclass(frozen=True)
class UniversalSource:
    """One dataset of a universal run.

    Attributes:
        dataset: ``DatasetXXX_Name``.
        weight: Relative share of optimiser steps drawn from it.
        labels: Its foreground label names in label-value order (value ``v`` ↔ ``labels[v - 1]``).
        text_index: Vocabulary index of each label value ``1..K``.
        modality: ``ct`` or ``mri`` (from its channel names).
    """

    dataset: str
    weight: float
    labels: tuple[str, ...]
    text_index: tuple[int, ...]
    modality: str = CT

    def __post_init__(self) -> None:
        if not (self.weight > 0 and np.isfinite(self.weight)):
            raise ValueError(f"{self.dataset}: a dataset weight must be a positive number, got {self.weight}")
        if len(self.labels) != len(self.text_index):
            raise ValueError(f"{self.dataset}: one vocabulary index per label is needed")

    @property
    def label_mirror(self) -> tuple[int, ...] | None:
        """Label values ``0..K`` after a left–right mirror (:func:`~segvolpipe.models.spec.label_mirror`)."""
        return label_mirror(self.labels)


@dataclass(frozen=True)
class UniversalPlan:
    """What a universal model was trained on (``universal.json`` of its results folder, and in its config).

    Attributes:
        name: ``Universal_{name}``: the results folder's dataset level.
        sources: The datasets, the reference (whose configuration sizes the model) first.
        labels: The model's classes: one display name per vocabulary entry (its first spelling).
        vocabulary: The normalised names (``labels`` normalised, same order).
    """

    name: str
    sources: tuple[UniversalSource, ...]
    labels: tuple[str, ...]
    vocabulary: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name.startswith(UNIVERSAL_PREFIX) or len(self.name) == len(UNIVERSAL_PREFIX):
            raise ValueError(f"a universal model's name starts with {UNIVERSAL_PREFIX!r}, got {self.name!r}")
        if len(self.sources) < 2:
            raise ValueError("a universal model trains on at least two datasets")
        if len({s.dataset for s in self.sources}) != len(self.sources):
            raise ValueError("a dataset is listed twice")

    @property
    def reference(self) -> str:
        return self.sources[0].dataset

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(s.dataset for s in self.sources)

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UniversalPlan:
        return from_stamped_json(cls, data)


def unify_labels(label_sets: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], tuple[str, ...], list[tuple[int, ...]]]:
    """The union of several datasets' label names.

    Args:
        label_sets: Per dataset, its foreground label names in label-value order.

    Returns:
        ``(labels, vocabulary, text_index)``: display names (first spelling seen) and normalised names in order of
        first appearance, and per dataset the vocabulary index of each of its labels.

    Raises:
        UserError: A dataset names two of its labels the same after normalisation.
    """
    vocabulary: dict[str, int] = {}
    labels: list[str] = []
    indices = []
    for names in label_sets:
        keys = [normalise_label_name(n) for n in names]
        if len(set(keys)) != len(keys):
            raise UserError(f"labels {list(names)} name one structure twice (after normalising case, '_' and '-')")
        for name, key in zip(names, keys, strict=True):
            if key not in vocabulary:
                vocabulary[key] = len(vocabulary)
                labels.append(name)
        indices.append(tuple(vocabulary[k] for k in keys))
    return tuple(labels), tuple(vocabulary), indices


def universal_name(datasets: Sequence[str], name: str | None = None) -> str:
    """``Universal_{name}``, by default the datasets' ids joined (``Universal_900_902``)."""
    if name:
        text = name.removeprefix(UNIVERSAL_PREFIX)
        if not text.replace("_", "").replace("-", "").isalnum():
            raise UserError(f"--name {name!r}: use letters, digits, '_' and '-' only")
        return UNIVERSAL_PREFIX + text
    ids = [d.removeprefix("Dataset").split("_", 1)[0] for d in datasets]
    return UNIVERSAL_PREFIX + "_".join(ids)


def plan_universal(plans: Sequence[Plans], weights: Sequence[float] | None = None,
                   name: str | None = None) -> UniversalPlan:
    """The universal plan of several datasets' plans (the first is the reference).

    Raises:
        UserError: Fewer than two datasets, a dataset given twice, channel counts that differ, or a bad weight.
    """
    if len(plans) < 2:
        raise UserError("universal training needs at least two datasets (-d A -d B)")
    names = [p.dataset for p in plans]
    if len(set(names)) != len(names):
        raise UserError(f"a dataset is given twice: {', '.join(names)}")
    channels = {len(p.channel_names) for p in plans}
    if len(channels) > 1:
        raise UserError("the datasets have different numbers of image channels: " +
                        ", ".join(f"{p.dataset} {len(p.channel_names)}" for p in plans))
    weights = list(weights) if weights is not None else [1.0] * len(plans)
    if len(weights) != len(plans) or any(not (w > 0 and np.isfinite(w)) for w in weights):
        raise UserError(f"one positive weight per dataset is needed, got {weights}")
    label_sets = [tuple(n for n, v in sorted(p.labels, key=lambda t: t[1]) if v > 0) for p in plans]
    labels, vocabulary, indices = unify_labels(label_sets)
    sources = []
    for p, w, names_, index in zip(plans, weights, label_sets, indices, strict=True):
        sources.append(UniversalSource(p.dataset, float(w), names_, index, plans_modality(p)))
    return UniversalPlan(universal_name(names, name), tuple(sources), labels, vocabulary)


def universal_spec(reference: Plans, plan: UniversalPlan, configuration: str | None, variant: str,
                   **options: Any) -> ModelSpec:
    """The model spec: the reference dataset's sizes, every dataset's classes."""
    spec = spec_from_plans(reference, configuration, variant, **options)
    return replace(spec, labels=plan.labels, vocabulary=plan.vocabulary)


def universal_plans(reference: Plans, plan: UniversalPlan) -> Plans:
    """The results folder's ``plans.json``: the reference dataset's plans with the universal model's classes
    (label value ``i + 1`` ↔ ``plan.labels[i]``), used to predict a raw folder of unknown origin."""
    labels = (("background", 0), *((n, i + 1) for i, n in enumerate(plan.labels)))
    return replace(reference, dataset=plan.name, labels=labels)


def step_source(weights: Sequence[float], seed: int, epoch: int, step: int) -> int:
    """The dataset (index into ``weights``) an optimiser step draws its batch from, in proportion to ``weights``.

    A function of ``(seed, epoch, step)`` only: every rank and a resumed run draw the same sequence.
    """
    if len(weights) == 1:
        return 0
    p = np.asarray(weights, dtype=np.float64)
    return int(np.random.default_rng([seed, epoch, step, _SCHEDULE_SALT]).choice(p.size, p=p / p.sum()))


UNIVERSAL_FILE = "universal.json"


def load_universal(folder: Path) -> UniversalPlan | None:
    """The universal plan of a results folder (``{folder}/universal.json``), or None for a one-dataset model."""
    from segvolpipe.io.atomic import read_json

    path = Path(folder) / UNIVERSAL_FILE
    if not path.is_file():
        return None
    try:
        return UniversalPlan.from_json(read_json(path))
    except (TypeError, ValueError) as exc:
        raise UserError(f"unreadable universal.json ({exc})", path) from None


def dataset_folder(folder: Path, dataset: str) -> Path:
    """``{folder}/datasets/{DatasetXXX}``: the plans, dataset.json and fingerprint of a dataset a model knows besides
    its own folder's (a universal model's datasets; a transferred model's init datasets and its own), with
    ``dataset`` as ``-d`` takes it (``17``, ``017`` or the folder name)."""
    from segvolpipe.paths import list_datasets, resolve_dataset

    root = Path(folder) / "datasets"
    known = list_datasets(root)
    try:
        return root / resolve_dataset(dataset, root)
    except UserError:
        have = f"it knows {', '.join(known)}" if known else "it knows only its own dataset's preprocessing"
        raise UserError(f"the model was not trained on (or adapted from) dataset {dataset!r}: {have}",
                        folder) from None
