"""The three roots of the folder contract and dataset-id resolution (``-d 17``, ``017``, ``Dataset017_BTCV``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from segvolpipe.errors import UserError

_DATASET_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9][A-Za-z0-9_\-]*)$")


def raw_root() -> Path:
    """``SEGVOL_RAW`` or ``./raw_data``."""
    return Path(os.environ.get("SEGVOL_RAW", "raw_data"))


def preprocessed_root() -> Path:
    """``SEGVOL_PREPROCESSED`` or ``./preprocessed``."""
    return Path(os.environ.get("SEGVOL_PREPROCESSED", "preprocessed"))


def results_root() -> Path:
    """``SEGVOL_RESULTS`` or ``./results``."""
    return Path(os.environ.get("SEGVOL_RESULTS", "results"))


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset017_BTCV`` from ``(17, "BTCV")``; checks both parts."""
    if not 0 <= dataset_id <= 999:
        raise UserError(f"dataset id must be between 0 and 999, got {dataset_id}")
    folder = f"Dataset{dataset_id:03d}_{name}"
    if not _DATASET_RE.match(folder):
        raise UserError(f"dataset name {name!r} may hold only letters, digits, '_' and '-'")
    return folder


def parse_dataset_folder(name: str) -> tuple[int, str] | None:
    """``(17, "BTCV")`` for ``Dataset017_BTCV``, None for anything else."""
    m = _DATASET_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def list_datasets(root: Path) -> list[str]:
    """Dataset folders under ``root``, sorted."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and parse_dataset_folder(p.name))


def resolve_dataset(spec: str | int | None, root: Path) -> str:
    """The dataset folder name under ``root`` that ``spec`` names.

    Args:
        spec: ``17``, ``"017"``, ``"Dataset017_BTCV"`` or None (then the only dataset there).
        root: One of the three roots.

    Raises:
        UserError: no match, several matches (two folders with one id) or no spec with several datasets;
            the message lists what exists.
    """
    existing = list_datasets(root)
    listing = ", ".join(existing) if existing else "none"
    if spec is None:
        if len(existing) == 1:
            return existing[0]
        if not existing:
            raise UserError("no dataset found (looked for Dataset###_Name folders)", root)
        raise UserError(f"several datasets; choose one with -d: {listing}", root)
    text = str(spec).strip()
    if text.isdigit():
        dataset_id = int(text)
        matches = [d for d in existing if parse_dataset_folder(d)[0] == dataset_id]  # type: ignore[index]
    elif parse_dataset_folder(text):
        matches = [d for d in existing if d == text]
    else:
        raise UserError(f"{text!r} is not a dataset id (17, 017) or folder name (Dataset017_Name)")
    if not matches:
        raise UserError(f"no dataset {text!r}; existing: {listing}", root)
    if len(matches) > 1:
        raise UserError(f"dataset id {text} is used by several folders: {', '.join(matches)}", root)
    return matches[0]
