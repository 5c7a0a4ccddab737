"""Options and result of the phantom stage: frozen dataclasses with JSON round trips and validation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from segvolpipe.errors import UserError, check_choice

# Label order of the organs (ids 1..7 when all are labelled).
ORGANS: tuple[str, ...] = ("liver", "spleen", "left_kidney", "right_kidney", "aorta", "stomach", "pancreas")
MODALITIES: tuple[str, ...] = ("ct", "mri")
MRI_CONTRASTS: tuple[str, ...] = ("t1", "t2")
MIN_SIZE = 8

# Bumped whenever the generator's output changes for the same options, so that old datasets are not
# mistaken for current ones (it is part of the options hash).
GENERATOR_VERSION = 5
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PhantomOptions:
    """Settings of a synthetic abdominal CT/MRI dataset.

    Attributes:
        n_train: Number of training cases (``imagesTr``/``labelsTr``).
        n_test: Number of test cases (``imagesTs``/``labelsTs``), numbered after the training ones.
        modality: ``"ct"`` (Hounsfield units, int16) or ``"mri"`` (arbitrary units).
        mri_contrast: ``"t1"`` or ``"t2"``; used only for MRI.
        size: Canonical array shape ``(z, y, x)`` in voxels (the anatomy fills it whatever the spacing).
        seed: Seed of the dataset; case ``i`` draws from ``np.random.SeedSequence([seed, i])``.
        name: Dataset name (``Dataset{id:03d}_{name}``); None for ``PhantomCT`` / ``PhantomMRI``.
        labels: Organs to label, in the order of their label ids (1, 2, ...); the others are still drawn
            in the image but labelled 0. None labels all of :data:`ORGANS`.
        random_orientation: Store files in varied orientations (RAS, LPS, sagittal storage ...) instead
            of always RAS.
    """

    n_train: int = 16
    n_test: int = 4
    modality: str = "ct"
    mri_contrast: str = "t1"
    size: tuple[int, int, int] = (64, 128, 128)
    seed: int = 0
    name: str | None = None
    labels: tuple[str, ...] | None = None
    random_orientation: bool = True

    def __post_init__(self) -> None:
        check_choice(self.modality, MODALITIES, "modality")
        check_choice(self.mri_contrast, MRI_CONTRASTS, "MRI contrast")
        if self.n_train < 1:
            raise UserError(f"n_train must be at least 1, got {self.n_train}")
        if self.n_test < 0:
            raise UserError(f"n_test must not be negative, got {self.n_test}")
        if self.seed < 0:
            raise UserError(f"seed must not be negative, got {self.seed}")
        size = tuple(int(s) for s in self.size)
        if len(size) != 3 or min(size) < MIN_SIZE:
            raise UserError(f"size must be three sizes (z, y, x) of at least {MIN_SIZE} voxels, got {self.size}")
        object.__setattr__(self, "size", size)
        if self.labels is not None:
            labels = tuple(self.labels)
            if not labels:
                raise UserError("labels must name at least one organ (or be None for all)")
            for organ in labels:
                check_choice(organ, ORGANS, "organ")
            if len(set(labels)) != len(labels):
                raise UserError(f"labels name an organ twice: {labels}")
            object.__setattr__(self, "labels", labels)
        if self.name is not None and not self.name:
            raise UserError("dataset name must not be empty")

    @property
    def dataset_name(self) -> str:
        """The dataset name: :attr:`name`, or ``PhantomCT`` / ``PhantomMRI``."""
        if self.name is not None:
            return self.name
        return "PhantomCT" if self.modality == "ct" else "PhantomMRI"

    @property
    def labelled_organs(self) -> tuple[str, ...]:
        """The labelled organs in label-id order (id = position + 1)."""
        return ORGANS if self.labels is None else self.labels

    def case_name(self, index: int) -> str:
        """``phantomct_000`` for case 0 of ``PhantomCT``."""
        return f"{self.dataset_name.lower()}_{index:03d}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["size"] = list(self.size)
        data["labels"] = None if self.labels is None else list(self.labels)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhantomOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"options_hash", "generator_version", "schema_version"})
        if unknown:
            raise UserError(f"unknown phantom option(s): {', '.join(unknown)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        if "size" in kwargs:
            kwargs["size"] = tuple(kwargs["size"])
        if kwargs.get("labels") is not None:
            kwargs["labels"] = tuple(kwargs["labels"])
        return cls(**kwargs)

    def options_hash(self) -> str:
        """SHA-256 (16 hex digits) of the options and :data:`GENERATOR_VERSION`."""
        payload = json.dumps({"options": self.to_json(), "generator_version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PhantomResult:
    """What :func:`~segvolpipe.phantoms.make_phantom_dataset` produced.

    Attributes:
        folder: The dataset folder ``{raw_root}/Dataset{id:03d}_{name}``.
        dataset: The folder name.
        train_cases: Training case names.
        test_cases: Test case names.
        skipped: True when an identical dataset already existed and nothing was written.
        seconds: Wall time of the call.
    """

    folder: Path
    dataset: str
    train_cases: tuple[str, ...]
    test_cases: tuple[str, ...]
    skipped: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "folder": str(self.folder),
            "dataset": self.dataset,
            "train_cases": list(self.train_cases),
            "test_cases": list(self.test_cases),
            "skipped": self.skipped,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhantomResult:
        return cls(
            folder=Path(data["folder"]),
            dataset=str(data["dataset"]),
            train_cases=tuple(data["train_cases"]),
            test_cases=tuple(data["test_cases"]),
            skipped=bool(data["skipped"]),
            seconds=float(data["seconds"]),
        )
