"""Seeded cross-validation folds (``splits.json``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segvolpipe.errors import UserError
from segvolpipe.io.atomic import read_json, write_json

N_FOLDS = 5
SPLIT_SEED = 12345


def make_splits(case_ids: list[str], n_folds: int = N_FOLDS, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """K-fold splits over the sorted case ids, shuffled with ``seed``.

    Fewer cases than folds → one fold per case; a single case → one fold that trains and validates on it.
    """
    ids = sorted(case_ids)
    if not ids:
        raise UserError("no cases to split")
    if len(ids) == 1:
        return [{"train": ids, "val": ids}]
    k = min(n_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, k)
    out = []
    for fold in folds:
        val = sorted(ids[i] for i in fold)
        out.append({"train": [c for c in ids if c not in val], "val": val})
    return out


def save_splits(path: Path, splits: list[dict[str, list[str]]]) -> None:
    write_json(path, {"seed": SPLIT_SEED, "n_folds": len(splits), "folds": splits})


def load_splits(path: Path) -> list[dict[str, list[str]]]:
    if not path.exists():
        raise UserError("no splits; run `segvol plan-preprocess` first", path)
    return list(read_json(path)["folds"])
