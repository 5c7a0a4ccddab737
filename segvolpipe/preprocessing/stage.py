"""The ``plan-preprocess`` stage: integrity check → fingerprint → plans + splits → preprocessed cases.

Idempotent: the fingerprint is reused while the raw files (names, sizes, times) and dataset.json are
unchanged; existing plans are kept (user edits survive) unless the fingerprint changed or the user asks
for a different normalisation or budget; a case is skipped when its outputs record the same input hash.
``overwrite`` redoes everything. Nothing is written when the integrity check fails.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from segvolpipe.errors import UserError
from segvolpipe.fingerprint import (
    Fingerprint,
    compute_fingerprint,
    load_fingerprint,
    raw_input_hash,
    save_fingerprint,
)
from segvolpipe.io.atomic import atomic_path, read_json, remove_stale_temporaries, write_json
from segvolpipe.io.dataset import DatasetSpec, RawCase, load_training_cases
from segvolpipe.io.lock import stage_lock
from segvolpipe.log import logger
from segvolpipe.parallel import default_workers, map_cases
from segvolpipe.paths import preprocessed_root, raw_root, resolve_dataset
from segvolpipe.planning.accelerator import detect_accelerator
from segvolpipe.planning.planner import make_plans
from segvolpipe.planning.plans import Plans, load_plans, save_plans
from segvolpipe.planning.splits import make_splits, save_splits
from segvolpipe.preprocessing.case import CaseJob, PreprocessSettings, preprocess_case
from segvolpipe.preprocessing.normalization import parse_norm_override


@dataclass(frozen=True)
class PlanPreprocessOptions:
    """Options of ``segvol plan-preprocess``."""

    configurations: tuple[str, ...] | None = None  # None: every planned configuration
    workers: int = field(default_factory=default_workers)
    norm: str | None = None
    overwrite: bool = False
    gpu_memory_gb: float | None = None
    fingerprint_only: bool = False
    plan_only: bool = False
    progress: bool = True


@dataclass(frozen=True)
class PlanPreprocessResult:
    """What the stage did; ``failed`` lists ``(case, one-line error)``."""

    dataset: str
    folder: Path
    configurations: tuple[str, ...]
    preprocessed: int
    skipped: int
    linked: int
    failed: tuple[tuple[str, str], ...]
    fingerprint_reused: bool
    plans_reused: bool
    seconds: dict[str, float]
    plans: Plans | None = None  # the plans used (None after --fingerprint-only)


def _copy_dataset_json(raw_folder: Path, out: Path) -> None:
    src, dst = raw_folder / "dataset.json", out / "dataset.json"
    if dst.exists() and dst.read_bytes() == src.read_bytes():
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _fingerprint(dataset: str, spec: DatasetSpec, cases: list[RawCase], out: Path, opts: PlanPreprocessOptions) -> tuple[Fingerprint, bool]:
    path = out / "fingerprint.json"
    if path.exists() and not opts.overwrite:
        try:
            old = load_fingerprint(path)
            if old.input_hash == raw_input_hash(spec, cases):
                logger.info("fingerprint: unchanged raw data, reusing %s", path)
                return old, True
        except (UserError, KeyError, TypeError, ValueError):
            logger.info("fingerprint: %s is unreadable, recomputing", path)
    fp = compute_fingerprint(dataset, spec, cases, opts.workers, opts.progress)
    save_fingerprint(path, fp)
    return fp, False


def _plans(dataset: str, spec: DatasetSpec, fp: Fingerprint, out: Path, opts: PlanPreprocessOptions) -> tuple[Plans, bool]:
    path = out / "plans.json"
    overrides = parse_norm_override(opts.norm, len(spec.channel_names))
    if path.exists() and not opts.overwrite and opts.norm is None and opts.gpu_memory_gb is None:
        try:
            old = load_plans(path)
            if old.fingerprint_hash == fp.input_hash:
                logger.info("plans: keeping %s (use --overwrite to re-plan)", path)
                return old, True
        except UserError:
            logger.info("plans: %s is invalid, re-planning", path)
    plans = make_plans(dataset, fp, detect_accelerator(opts.gpu_memory_gb), spec.channel_names, spec.labels, overrides)
    save_plans(path, plans)
    return plans, False


def _splits(cases: list[RawCase], out: Path, overwrite: bool) -> None:
    path = out / "splits.json"
    ids = sorted(c.case_id for c in cases)
    if path.exists() and not overwrite:
        try:
            folds = read_json(path)["folds"]
            if sorted({c for f in folds for c in f["train"] + f["val"]}) == ids:
                return
        except (UserError, KeyError, TypeError):
            pass
    save_splits(path, make_splits(ids))


def _link_case(src: Path, dst: Path, case_id: str) -> None:
    """Hard-link (or copy) a case's three files from a configuration with identical preprocessing."""
    for name in (f"{case_id}.npy", f"{case_id}_seg.npy", f"{case_id}.json"):
        s, d = src / name, dst / name
        if not s.exists():
            continue
        with atomic_path(d) as tmp:
            tmp.unlink()
            try:
                os.link(s, tmp)
            except OSError:
                shutil.copyfile(s, tmp)


def run_plan_preprocess(dataset: str | int | None, opts: PlanPreprocessOptions) -> PlanPreprocessResult:
    """Run the whole stage for one raw dataset (see the module docstring)."""
    seconds: dict[str, float] = {}
    name = resolve_dataset(dataset, raw_root())
    raw_folder = raw_root() / name
    t0 = time.perf_counter()
    spec, cases = load_training_cases(raw_folder, headers=False)  # the fingerprint pass checks every file
    seconds["check"] = time.perf_counter() - t0
    out = preprocessed_root() / name
    with stage_lock(out, "plan-preprocess"):  # after the integrity check: nothing is written when it fails
        remove_stale_temporaries(out)  # what a killed run was writing
        t0 = time.perf_counter()
        fp, fp_reused = _fingerprint(name, spec, cases, out, opts)
        _copy_dataset_json(raw_folder, out)
        seconds["fingerprint"] = time.perf_counter() - t0
        if opts.fingerprint_only:
            return PlanPreprocessResult(name, out, (), 0, 0, 0, (), fp_reused, False, seconds)
        t0 = time.perf_counter()
        plans, plans_reused = _plans(name, spec, fp, out, opts)
        _splits(cases, out, opts.overwrite)
        seconds["planning"] = time.perf_counter() - t0
        if opts.plan_only:
            return PlanPreprocessResult(name, out, (), 0, 0, 0, (), fp_reused, plans_reused, seconds, plans)
        configs = opts.configurations or tuple(plans.configurations)
        for c in configs:
            plans.configuration(c)  # unknown names → UserError with the choices
        t0 = time.perf_counter()
        counts = {"done": 0, "skipped": 0, "linked": 0}
        failed: list[tuple[str, str]] = []
        finished_by_key: dict[str, Path] = {}
        report: dict[str, dict[str, str]] = {}
        for c in configs:
            conf = plans.configuration(c)
            settings = PreprocessSettings(conf.target_spacing, plans.normalization, conf.image_order, conf.label_order)
            folder = out / c
            folder.mkdir(parents=True, exist_ok=True)
            report[c] = {}
            twin = finished_by_key.get(settings.key())
            if twin is not None:
                ok = [cid for cid, status in report[twin.name].items() if status in ("done", "skipped", "linked")]
                for cid in ok:
                    _link_case(twin, folder, cid)
                    report[c][cid] = "linked"
                counts["linked"] += len(ok)
                logger.info("%s: same preprocessing as %s, %d case(s) hard-linked", c, twin.name, len(ok))
                continue
            jobs = [CaseJob(case, folder, settings, spec.label_ids, opts.overwrite) for case in cases]
            for outcome in map_cases(preprocess_case, jobs, opts.workers, f"preprocess {c}", opts.progress):
                cid = outcome.item.case.case_id
                if outcome.error:
                    failed.append((cid, outcome.error))
                    report[c][cid] = f"failed: {outcome.error}"
                    continue
                assert outcome.value is not None
                key = "skipped" if outcome.value["skipped"] else "done"
                counts[key] += 1
                report[c][cid] = key
            finished_by_key[settings.key()] = folder
        seconds["preprocessing"] = time.perf_counter() - t0
        write_json(out / "preprocess_report.json", {"configurations": report, "failed": [list(f) for f in failed],
                                                    "seconds": seconds})
        return PlanPreprocessResult(name, out, tuple(configs), counts["done"], counts["skipped"], counts["linked"],
                                    tuple(failed), fp_reused, plans_reused, seconds, plans)
