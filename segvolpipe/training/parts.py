"""A training fold's data: the cases of each dataset (one, or a universal model's several) and their stores."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from segvolpipe.errors import UserError
from segvolpipe.log import logger
from segvolpipe.paths import preprocessed_root
from segvolpipe.planning.splits import load_splits
from segvolpipe.training.config import TrainConfig
from segvolpipe.training.data import SamplingOptions


def fold_cases(pre: Path, fold: str) -> tuple[list[str], list[str]]:
    """``(training cases, validation cases)`` of ``fold`` (``"all"``: every case, no validation)."""
    splits = load_splits(pre / "splits.json")
    if fold == "all":
        cases = sorted({c for s in splits for c in s["train"] + s["val"]})
        return cases, []
    k = int(fold)
    if k >= len(splits):
        raise UserError(f"fold {k} does not exist ({len(splits)} folds in splits.json)", pre / "splits.json")
    return list(splits[k]["train"]), list(splits[k]["val"])


@dataclass
class DataSplit:
    """One dataset's share of a fold: where it is and its cases (all that validation needs)."""

    dataset: str
    pre: Path
    train: list[str]
    val: list[str]
    label_mirror: tuple[int, ...] | None
    weight: float = 1.0


@dataclass
class DataPart(DataSplit):
    """A split with its opened cases and sampling options (what training needs)."""

    store: object = None  # CaseStore
    sampling: SamplingOptions | None = None
    pseudo: Path | None = None


def data_splits(config: TrainConfig, pre: Path) -> list[DataSplit]:
    """The fold's cases: the dataset's, or one split per dataset of a universal model (reference first)."""
    if config.universal is None:
        sources = [(config.dataset, pre, config.sampling.label_mirror, 1.0)]
    else:
        sources = [(s.dataset, preprocessed_root() / s.dataset, s.label_mirror, s.weight)
                   for s in config.universal.sources]
    return [DataSplit(dataset, folder, *fold_cases(folder, config.fold), mirror, weight)
            for dataset, folder, mirror, weight in sources]


def data_parts(config: TrainConfig, pre: Path, require_pseudo: bool | None = None) -> list[DataPart]:
    """The fold's splits with their case stores (pseudo-masks when training uses them; ``require_pseudo``:
    ``--pseudo-masks`` was given, so their absence is an error rather than a note)."""
    from segvolpipe.training.data import CaseStore

    conf = config.configuration
    parts = []
    for split in data_splits(config, pre):
        pseudo: Path | None = split.pre / "pseudomasks" / conf
        if not (config.sampling.pseudo_masks and config.variant != "unet"):
            pseudo = None
        elif not pseudo.is_dir():
            if require_pseudo:
                raise UserError(f"no pseudo-masks for {conf}: run 'segvol pseudomask -d {split.dataset} -c {conf}' or "
                                "train with --no-pseudo-masks", pseudo)
            logger.info("no pseudo-masks in %s: training without them", pseudo)
            pseudo = None
        store = CaseStore(split.pre / conf, split.train + split.val, pseudo)
        sampling = replace(config.sampling, label_mirror=split.label_mirror, pseudo_masks=pseudo is not None)
        parts.append(DataPart(**vars(split), store=store, sampling=sampling, pseudo=pseudo))
    return parts
