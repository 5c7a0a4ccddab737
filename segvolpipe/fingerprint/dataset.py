"""The dataset fingerprint (``fingerprint.json``): what the planner needs to configure everything.

Per case: spacing, shape, orientation, non-zero box. Per channel: foreground (label > 0) intensity
statistics from a bounded sample (``max_samples`` voxels for the whole dataset, spread evenly over the
cases, so memory stays small however large the dataset). Per label: volume statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segvolpipe.errors import Problems, UserError
from segvolpipe.fingerprint.case import CaseTask, fingerprint_case
from segvolpipe.io.atomic import SCHEMA_VERSION, read_json, write_json
from segvolpipe.io.dataset import DatasetSpec, RawCase, files_hash
from segvolpipe.parallel import map_cases

PERCENTILES = (0.05, 0.5, 50.0, 99.5, 99.95)
DEFAULT_MAX_SAMPLES = 10_000_000  # voxels over the whole dataset (40 MB of float32)


def _pkey(p: float) -> str:
    return f"percentile_{p:g}".replace(".", "_")


@dataclass(frozen=True)
class ChannelStats:
    """Foreground intensity statistics of one channel (over the dataset's sample)."""

    index: int
    name: str
    mean: float
    std: float
    min: float
    max: float
    percentiles: dict[str, float]
    n_samples: int

    def percentile(self, p: float) -> float:
        return self.percentiles[_pkey(p)]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "mean": self.mean, "std": self.std, "min": self.min,
                "max": self.max, **self.percentiles, "n_samples": self.n_samples}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChannelStats:
        pct = {k: float(v) for k, v in d.items() if k.startswith("percentile_")}
        return cls(int(d["index"]), str(d["name"]), float(d["mean"]), float(d["std"]), float(d["min"]),
                   float(d["max"]), pct, int(d["n_samples"]))

    @classmethod
    def from_sample(cls, index: int, name: str, sample: np.ndarray) -> ChannelStats:
        if sample.size == 0:  # no foreground anywhere: fall back to neutral statistics
            return cls(index, name, 0.0, 1.0, 0.0, 0.0, {_pkey(p): 0.0 for p in PERCENTILES}, 0)
        s = sample.astype(np.float64)
        pct = np.percentile(s, PERCENTILES)
        return cls(index, name, float(s.mean()), float(s.std()), float(s.min()), float(s.max()),
                   {_pkey(p): float(v) for p, v in zip(PERCENTILES, pct, strict=True)}, int(s.size))


@dataclass(frozen=True)
class Fingerprint:
    """What the planner reads. ``cases`` holds one dict per case (see ``fingerprint_case``, minus samples)."""

    dataset: str
    input_hash: str
    channels: tuple[ChannelStats, ...]
    labels: tuple[dict[str, Any], ...]
    cases: tuple[dict[str, Any], ...]
    samples_per_case: int
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.cases:
            raise ValueError("a fingerprint needs at least one case")

    @property
    def spacings(self) -> np.ndarray:
        """``[n_cases, 3]`` canonical (z, y, x) spacings in mm."""
        return np.array([c["spacing"] for c in self.cases], dtype=np.float64)

    @property
    def cropped_shapes(self) -> np.ndarray:
        """``[n_cases, 3]`` shapes after cropping to the non-zero box, at the original spacing."""
        return np.array([c["cropped_shape"] for c in self.cases], dtype=np.int64)

    @property
    def median_crop_fraction(self) -> float:
        return float(np.median([c["crop_fraction"] for c in self.cases]))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "dataset": self.dataset,
            "input_hash": self.input_hash,
            "samples_per_case": self.samples_per_case,
            "n_cases": len(self.cases),
            "median_spacing": np.median(self.spacings, axis=0).tolist(),
            "median_cropped_shape": np.median(self.cropped_shapes, axis=0).tolist(),
            "median_crop_fraction": self.median_crop_fraction,
            "channels": [c.to_json() for c in self.channels],
            "labels": list(self.labels),
            "cases": list(self.cases),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Fingerprint:
        return cls(
            dataset=str(d["dataset"]),
            input_hash=str(d["input_hash"]),
            channels=tuple(ChannelStats.from_json(c) for c in d["channels"]),
            labels=tuple(d["labels"]),
            cases=tuple(d["cases"]),
            samples_per_case=int(d["samples_per_case"]),
            schema_version=int(d.get("schema_version", SCHEMA_VERSION)),
        )


def raw_input_hash(spec: DatasetSpec, cases: list[RawCase]) -> str:
    """Hash of dataset.json content and every case file's name, size and mtime."""
    import json

    files = [p for c in cases for p in c.files()]
    return files_hash(files, extra=json.dumps(spec.raw, sort_keys=True, default=str))


def compute_fingerprint(
    dataset: str,
    spec: DatasetSpec,
    cases: list[RawCase],
    workers: int = 1,
    progress: bool = True,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> Fingerprint:
    """Fingerprint every case (in parallel) and aggregate.

    Raises:
        Problems: every data-level problem of every case, all at once.
    """
    per_case = max(1000, max_samples // max(1, len(cases)))
    tasks = [CaseTask(c, spec.label_ids, per_case) for c in cases]
    results: dict[str, dict[str, Any]] = {}
    samples: dict[str, np.ndarray] = {}
    problems: list[UserError] = []
    for outcome in map_cases(fingerprint_case, tasks, workers, "fingerprint", progress):
        if outcome.error:
            problems.append(UserError(outcome.error))
            continue
        result = outcome.value
        assert result is not None
        samples[result["case_id"]] = result.pop("samples")
        results[result["case_id"]] = result
    if problems:
        raise Problems(f"{dataset}: {len(problems)} case(s) have bad data", problems)
    ordered = tuple(results[c.case_id] for c in cases)
    # concatenate in case order (not completion order) so the statistics are bit-identical for any --np
    channels = tuple(
        ChannelStats.from_sample(i, name, np.concatenate([samples[c.case_id][i] for c in cases]))
        for i, name in enumerate(spec.channel_names)
    )
    return Fingerprint(dataset, raw_input_hash(spec, cases), channels, _label_stats(spec, ordered), ordered, per_case)


def _label_stats(spec: DatasetSpec, cases: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    out = []
    for name, label_id in spec.foreground_labels:
        vols = [c["label_voxels"].get(str(label_id), 0) * c["voxel_volume_ml"] for c in cases]
        present = [v for v in vols if v > 0]
        out.append({
            "name": name,
            "id": label_id,
            "n_cases_present": len(present),
            "volume_ml_mean": float(np.mean(present)) if present else 0.0,
            "volume_ml_median": float(np.median(present)) if present else 0.0,
            "volume_ml_min": float(np.min(present)) if present else 0.0,
            "volume_ml_max": float(np.max(present)) if present else 0.0,
        })
    return tuple(out)


def save_fingerprint(path: Path, fingerprint: Fingerprint) -> None:
    write_json(path, fingerprint.to_json())


def load_fingerprint(path: Path) -> Fingerprint:
    if not path.exists():
        raise UserError("no fingerprint; run `segvol plan-preprocess` first", path)
    return Fingerprint.from_json(read_json(path))
