"""``segvol predict``: a folder of raw images (or one image) → label maps in each input's own geometry.

Inputs are named as in the raw format (``{case}_0000.nii.gz``, one file per channel); a single-channel model
also takes plain ``{case}.nii.gz`` files. Each case is written as ``OUT/{case}.nii.gz`` (and, when asked,
``OUT/{case}_probabilities.npz``), then recorded in ``OUT/predictions.json`` (mode, classes, volumes in ml, time,
or the error). A case that fails is recorded and the others go on; a rerun skips the cases already predicted
with the same model and settings, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segvolpipe.errors import UserError
from segvolpipe.inference.model_folder import resolve_model_folder
from segvolpipe.inference.predictor import Predictor, volumes_ml
from segvolpipe.inference.prompts import Target, UserPrompt
from segvolpipe.io.atomic import atomic_path, read_json, remove_stale_temporaries, write_json
from segvolpipe.io.lock import stage_lock
from segvolpipe.io.nifti import read_image, strip_nifti_suffix, write_label
from segvolpipe.log import logger
from segvolpipe.parallel import map_cases

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
RECORD = "predictions.json"


@dataclass(frozen=True)
class PredictOptions:
    """Options of ``segvol predict`` (None: the plans' or the model folder's default)."""

    dataset: str | None = None
    model: str | None = None
    configuration: str | None = None
    variant: str | None = None
    folds: tuple[str, ...] | None = None
    checkpoint: str = "final"
    mode: str | None = None
    classes: tuple[str, ...] | None = None
    text: str | None = None
    box: tuple[float, ...] | None = None
    points: tuple[tuple[float, float, float, int], ...] = ()
    coords: str = "voxel"
    tta: bool = False
    step: float | None = None
    save_probabilities: bool = False
    device: str = "auto"
    workers: int = 1
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class InputCase:
    case: str
    images: tuple[Path, ...]


@dataclass
class PredictResult:
    model: Path
    output: Path
    settings: dict[str, Any]
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)  # predicted by an earlier run with the same settings

    @property
    def failed(self) -> dict[str, str]:
        return {c: r["error"] for c, r in self.cases.items() if r.get("status") == "failed"}


def discover_inputs(path: Path, channels: int) -> tuple[list[InputCase], dict[str, str]]:
    """Cases of a folder (or one file) and, per case that cannot be used, why."""
    if not path.exists():
        raise UserError("no such file or folder", path)
    # dot-files are never inputs: locks, atomic writes' temporary names
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and p.name[0] != ".")
    grouped: dict[str, dict[int, Path]] = {}
    plain: dict[str, Path] = {}
    for f in files:
        stem = strip_nifti_suffix(f.name)
        if stem is None:
            if path.is_file():
                raise UserError("not a NIfTI file (.nii or .nii.gz)", f)
            continue
        m = _CHANNEL.match(stem)
        if m:
            grouped.setdefault(m["case"], {})[int(m["channel"])] = f
        else:
            plain[stem] = f
    if path.is_file() and grouped:  # one file of a multi-channel case: its siblings come with it
        case = next(iter(grouped))
        for sibling in sorted(path.parent.iterdir()):
            stem = strip_nifti_suffix(sibling.name)
            m = _CHANNEL.match(stem or "")
            if m and m["case"] == case:
                grouped[case][int(m["channel"])] = sibling
    if not grouped and not plain:
        raise UserError("no NIfTI images here (expected {case}_0000.nii.gz files)", path)
    cases, failures = [], {}
    expected = list(range(channels))
    for case, by_channel in sorted(grouped.items()):
        if sorted(by_channel) != expected:
            have = ", ".join(f"{c:04d}" for c in sorted(by_channel))
            want = ", ".join(f"{c:04d}" for c in expected)
            failures[case] = f"{by_channel[min(by_channel)]}: channel file(s) {have}; the model needs {want}"
            continue
        cases.append(InputCase(case, tuple(by_channel[c] for c in expected)))
    for case, f in sorted(plain.items()):
        if case in grouped:
            continue
        if channels != 1:
            failures[case] = f"{f}: the model needs {channels} channels, named {case}_0000 … {case}_{channels - 1:04d}"
            continue
        cases.append(InputCase(case, (f,)))
    return cases, failures


def _settings(predictor: Predictor, options: PredictOptions) -> dict[str, Any]:
    stats = [[str(m.path), m.path.stat().st_size, m.path.stat().st_mtime_ns] for m in predictor.models]
    settings = {**predictor.describe(), "classes": list(options.classes) if options.classes else None,
                "text": options.text, "box": list(options.box) if options.box else None,
                "points": [list(p) for p in options.points], "coords": options.coords,
                "save_probabilities": options.save_probabilities}
    key = hashlib.sha256(json.dumps([settings, stats], sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {**settings, "key": key}


@dataclass(frozen=True)
class _Job:
    case: InputCase
    output: Path
    folder: Path
    options: PredictOptions


_CACHE: dict[tuple, Predictor] = {}


def _predictor(folder: Path, options: PredictOptions) -> Predictor:
    # with a model that knows several datasets (universal, or adapted from another dataset's model), -d names the
    # dataset the cases come from: its preprocessing and classes
    dataset = options.dataset if (folder / "datasets").is_dir() else None
    key = (str(folder), options.folds, options.checkpoint, options.mode, options.tta, options.step, options.device,
           dataset)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = Predictor(folder, options.folds, options.checkpoint, options.mode, options.tta, options.step,
                                options.device, dataset)
    return _CACHE[key]


def _targets(predictor: Predictor, options: PredictOptions) -> list[Target]:
    prompt = None
    if options.box is not None or options.points:
        prompt = UserPrompt(options.text, options.box, options.points, options.coords)  # type: ignore[arg-type]
    return predictor.targets(options.classes, options.text, prompt)


def predict_one(job: _Job) -> dict[str, Any]:
    """Predict and write one case; returns its record (a :class:`UserError` marks it failed)."""
    start = time.perf_counter()
    predictor = _predictor(job.folder, job.options)
    image, geometry = read_image(job.case.images)
    first = str(job.case.images[0])
    result = predictor.predict(image, geometry, _targets(predictor, job.options), first,
                               job.options.save_probabilities)
    out = job.output / f"{job.case.case}.nii.gz"
    write_label(out, result.label, geometry)
    files = [out.name]
    if result.probabilities is not None:
        probs = np.stack([geometry.from_canonical(p) for p in result.probabilities])
        target = job.output / f"{job.case.case}_probabilities.npz"
        with atomic_path(target, suffix=".npz") as tmp:
            np.savez_compressed(tmp, probabilities=probs, values=np.asarray(result.values, dtype=np.int32),
                                names=np.asarray(result.names, dtype=np.str_), affine=np.asarray(geometry.affine))
        files.append(target.name)
    ml = volumes_ml(result.label, result.values, geometry.spacing)
    names = dict(zip(result.values, result.names, strict=True))
    found = {n: any(r["found"] for r in runs) for n, runs in result.zoom.items()}
    return {"status": "done", "images": [p.name for p in job.case.images], "files": files, "mode": predictor.mode,
            "classes": [n for v, n in names.items() if v > 0], "volumes_ml": {names[v]: round(x, 3) for v, x in ml.items()},
            "zoom_found": found or None, "seconds": round(time.perf_counter() - start, 3),
            "timings": {k: round(v, 3) for k, v in result.seconds.items()}, "shape": list(geometry.shape),
            "error": None}


def _check_writable(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        with atomic_path(output / ".write-test") as tmp:
            tmp.write_bytes(b"")
        (output / ".write-test").unlink()
    except PermissionError:
        raise UserError("the output folder is not writable", output) from None
    except OSError as exc:  # a file in the way (FileExistsError, NotADirectoryError), a read-only file system ...
        raise UserError(f"the output folder cannot be created or written ({exc.strerror or exc})", output) from None


def run_predict(source: Path, output: Path, options: PredictOptions) -> PredictResult:
    """Predict every case of ``source`` into ``output``; see the module docstring."""
    folder = resolve_model_folder(options.dataset, options.model, options.configuration, options.variant)
    predictor = _predictor(folder, options)
    _targets(predictor, options)  # option errors before any case runs
    cases, failures = discover_inputs(source, len(predictor.plans.channel_names))
    _check_writable(output)
    for case in cases:
        if any(p.resolve() == (output / f"{case.case}.nii.gz").resolve() for p in case.images):
            raise UserError(f"the prediction of {case.case} would overwrite its input: choose another -o", output)
    with stage_lock(output, "predict"):
        remove_stale_temporaries(output, recursive=False)  # what a killed run was writing
        settings = _settings(predictor, options)
        record_path = output / RECORD
        previous: dict[str, Any] = {}
        if record_path.is_file() and not options.overwrite:
            try:
                previous = read_json(record_path)
            except Exception:  # noqa: BLE001 - a damaged record only means nothing is skipped
                previous = {}
        done_before = previous.get("cases", {}) if previous.get("settings", {}).get("key") == settings["key"] else {}
        result = PredictResult(folder, output, settings)
        todo = []
        for case in cases:
            old = done_before.get(case.case)
            if old and old.get("status") == "done" and all((output / f).is_file() for f in old.get("files", [])):
                result.cases[case.case] = old
                result.skipped.add(case.case)
            else:
                todo.append(_Job(case, output, folder, options))
        for case, error in failures.items():
            result.cases[case] = {"status": "failed", "error": error}
            logger.error("%s", error)
        skipped = len(cases) - len(todo)
        if skipped:
            logger.info("%d case(s) already predicted with these settings in %s (--overwrite redoes them)", skipped,
                        output)

        def save() -> None:
            write_json(record_path, {"settings": settings, "cases": dict(sorted(result.cases.items()))})

        save()
        for outcome in map_cases(predict_one, todo, options.workers, "predicting", options.progress):
            case = outcome.item.case.case
            if outcome.error is not None:
                result.cases[case] = {"status": "failed", "images": [p.name for p in outcome.item.case.images],
                                      "error": outcome.error}
                logger.error("%s", outcome.error)
            else:
                result.cases[case] = outcome.value  # type: ignore[assignment]
            save()
        return result
