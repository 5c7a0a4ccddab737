"""The ``pseudomask`` stage over preprocessed datasets (resumable, idempotent, parallel over cases)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segvolpipe.errors import UserError
from segvolpipe.fingerprint import load_fingerprint
from segvolpipe.io.atomic import remove_stale_temporaries, write_json
from segvolpipe.io.lock import stage_lock
from segvolpipe.log import logger
from segvolpipe.parallel import default_workers, map_cases
from segvolpipe.paths import list_datasets, preprocessed_root, resolve_dataset
from segvolpipe.planning.plans import load_plans
from segvolpipe.pseudomask.case import PseudomaskJob, PseudomaskSettings, pseudomask_case


@dataclass(frozen=True)
class PseudomaskOptions:
    """Options of ``segvol pseudomask``."""

    configuration: str | None = None  # None: the plans' default configuration
    settings: PseudomaskSettings = field(default_factory=PseudomaskSettings)
    workers: int = field(default_factory=default_workers)
    overwrite: bool = False
    qc: bool = True
    progress: bool = True


@dataclass(frozen=True)
class PseudomaskResult:
    """What the stage did for one dataset."""

    dataset: str
    configuration: str
    folder: Path
    done: int
    skipped: int
    failed: tuple[tuple[str, str], ...]
    class_dice: dict[str, float]
    class_dice_before_cleaning: dict[str, float]
    mean_regions: float
    mean_coverage: float
    seconds: float


def datasets_lacking_pseudomasks() -> list[str]:
    """Preprocessed datasets without a pseudo-mask report for their default configuration."""
    root = preprocessed_root()
    out = []
    for name in list_datasets(root):
        if not (root / name / "plans.json").exists():
            continue
        default = load_plans(root / name / "plans.json").default_configuration
        if not (root / name / "pseudomasks" / default / "report.json").exists():
            out.append(name)
    return out


def run_pseudomask(dataset: str | int | None, options: PseudomaskOptions) -> list[PseudomaskResult]:
    """Pseudo-masks for one dataset, or (``dataset`` None) for every one that lacks them."""
    if dataset is None:
        names = datasets_lacking_pseudomasks()
        if names:
            logger.info("pseudo-masks missing for: %s", ", ".join(names))
    else:
        names = [resolve_dataset(dataset, preprocessed_root())]
    return [_run_one(name, options) for name in names]


def _run_one(name: str, options: PseudomaskOptions) -> PseudomaskResult:
    t0 = time.perf_counter()
    folder = preprocessed_root() / name
    plans = load_plans(folder / "plans.json")
    conf = plans.configuration(options.configuration)
    data_dir = folder / conf.name
    if not data_dir.is_dir():
        raise UserError(f"configuration {conf.name} is not preprocessed; run `segvol plan-preprocess -c {conf.name}`", data_dir)
    case_ids = [c["case_id"] for c in load_fingerprint(folder / "fingerprint.json").cases]
    out_dir = folder / "pseudomasks" / conf.name
    class_ids = tuple(i for _, i in plans.labels if i != 0)
    with stage_lock(out_dir, "pseudomask"):
        remove_stale_temporaries(out_dir)  # what a killed run was writing
        jobs = [PseudomaskJob(cid, data_dir, out_dir, options.settings, class_ids, options.qc, options.overwrite) for cid in case_ids]
        summaries: dict[str, dict] = {}
        failed: list[tuple[str, str]] = []
        for outcome in map_cases(pseudomask_case, jobs, options.workers, f"pseudomask {name}", options.progress):
            if outcome.error:
                failed.append((outcome.item.case_id, outcome.error))
            else:
                assert outcome.value is not None
                summaries[outcome.item.case_id] = outcome.value
        failed.sort()
        names = plans.label_names
        per_class = {
            names[c]: [s["best_match_dice"][str(c)] for s in summaries.values() if str(c) in s["best_match_dice"]]
            for c in class_ids
        }
        class_dice = {k: float(np.mean(v)) for k, v in per_class.items() if v}
        before = {
            names[c]: float(np.mean(v))
            for c in class_ids
            if (v := [s["best_match_dice_before_cleaning"][str(c)] for s in summaries.values() if str(c) in s["best_match_dice_before_cleaning"]])
        }
        ordered = [summaries[c] for c in case_ids if c in summaries]
        result = PseudomaskResult(
            dataset=name,
            configuration=conf.name,
            folder=out_dir,
            done=sum(not s["skipped"] for s in ordered),
            skipped=sum(s["skipped"] for s in ordered),
            failed=tuple(failed),
            class_dice=class_dice,
            class_dice_before_cleaning=before,
            mean_regions=float(np.mean([s["regions_kept"] for s in ordered])) if ordered else 0.0,
            mean_coverage=float(np.mean([s["coverage"] for s in ordered])) if ordered else 0.0,
            seconds=time.perf_counter() - t0,
        )
        write_json(out_dir / "report.json", {
            "dataset": name,
            "configuration": conf.name,
            "settings": asdict(options.settings),
            "ground_truth_ids": {names[c]: c for c in class_ids},
            "pseudo_ids_start_at": max(class_ids, default=0) + 1,
            "best_match_dice_mean": class_dice,
            "best_match_dice_per_class": per_class,
            "best_match_dice_mean_before_cleaning": before,
            "mean_regions": result.mean_regions,
            "mean_coverage": result.mean_coverage,
            "cases": [{k: v for k, v in s.items() if k != "skipped"} for s in ordered],
            "failed": [list(f) for f in failed],
        })
        return result
