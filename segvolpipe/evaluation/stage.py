"""``segvol evaluate``: Dice per case and class, the rotation test and the figures.

Two uses (a third, ``--compare``, is :mod:`segvolpipe.evaluation.compare`):

* **Two folders** (``--pred DIR --ref DIR``, nnU-Net's ``evaluate_folder``): every reference ``{case}.nii.gz`` is
  scored against the prediction of the same name, with the labels of a ``dataset.json`` (``--labels FILE``, else
  ``-d``'s raw ``dataset.json``, else the one beside the reference folder, as in ``raw_data/DatasetXXX/labelsTr``).
  ``summary.json`` and ``per_case.csv`` go into ``--pred`` (or ``-o``).
* **A trained model** (``-d``/``-m``/``-c``/``--variant``, or the only trained model): when its raw dataset has
  ``imagesTs`` and ``labelsTs``, the test images are predicted into ``evaluation/test_predictions/`` (resumable,
  :func:`~segvolpipe.inference.stage.run_predict`) and scored against ``labelsTs``; otherwise the folds'
  cross-validation predictions ``fold_k/validation/{case}.nii.gz`` are scored against ``labelsTr``. Then the
  rotation test (:mod:`segvolpipe.evaluation.robustness`) runs on the same cases, each cross-validation case
  predicted by the fold that did not train on it. Written to ``{model}/evaluation/``: ``summary.json``,
  ``per_case.csv``, ``dice_violins.png``, ``overlay_{case}.png`` (a few cases), ``rotation.json``,
  ``rotation_bars.png`` and, with ``--sweep``, ``dice_vs_angle.png``.

A case that cannot be scored or rotated is listed in ``failures`` and the others go on. Every file is written
atomically; a rerun reuses the test predictions and the rotation cases already done with the same model and
settings, and rewrites the same summaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from segvolpipe.errors import UserError
from segvolpipe.evaluation.metrics import (
    CaseResult,
    evaluate_folders,
    score_case,
    summarise,
    write_per_case_csv,
    write_summary,
)
from segvolpipe.evaluation.robustness import PROMPTS, RotationCase, RotationSettings, run_rotation
from segvolpipe.evaluation.rotation import SEED_PROTOCOL_ANGLES
from segvolpipe.io.atomic import read_json, remove_stale_temporaries
from segvolpipe.io.dataset import DatasetSpec, RawCase, discover_cases, load_dataset_spec
from segvolpipe.io.lock import stage_lock
from segvolpipe.io.nifti import read_image, read_label, strip_nifti_suffix
from segvolpipe.log import logger
from segvolpipe.parallel import default_workers, map_cases
from segvolpipe.paths import raw_root, resolve_dataset

EVALUATION = "evaluation"
TEST_PREDICTIONS = "test_predictions"


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of ``segvol evaluate`` (see the module docstring).

    Attributes:
        dataset, model, configuration, variant: Which trained model (``-d`` also names the labels for ``--pred``).
        pred, ref: Two folders of label maps to score instead of a model.
        labels: A ``dataset.json`` (or its folder) whose labels ``--pred/--ref`` are scored with.
        output: Where ``--pred/--ref`` writes (default: ``pred``).
        rotate: Run the rotation test (model evaluation only).
        angles: Rotation of the test, radians about (S, A, R).
        sweep: Angles in degrees about the longitudinal axis for Dice against angle (empty: none).
        mode: Inference mode (None: the plans').
        prompt: ``text``, ``box`` or ``box+text`` for the rotation test.
        cases: Rotation test on the first N scored cases (None: all).
        hd95, nsd_mm: Surface metrics (slow).
        overlays: Cases drawn as ``overlay_{case}.png``.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: Processes for scoring and for predicting (None: every CPU for scoring, one for predicting).
        overwrite: Predict the test cases and the rotation test again.
        progress: Progress bars.
    """

    dataset: str | None = None
    model: str | None = None
    configuration: str | None = None
    variant: str | None = None
    pred: str | None = None
    ref: str | None = None
    labels: str | None = None
    output: str | None = None
    rotate: bool = True
    angles: tuple[float, float, float] = SEED_PROTOCOL_ANGLES
    sweep: tuple[float, ...] = ()
    mode: str | None = None
    prompt: str = "text"
    cases: int | None = None
    hd95: bool = False
    nsd_mm: float | None = None
    overlays: int = 3
    device: str = "auto"
    workers: int | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.pred is None) != (self.ref is None):
            raise UserError("--pred and --ref go together: the predicted and the reference label folders")
        if self.pred is not None and (self.model or self.configuration or self.variant):
            raise UserError("--pred/--ref score two folders; -m/-c/--variant choose a model to evaluate: "
                            "give one or the other")
        if self.pred is None and (self.labels or self.output):
            raise UserError("--labels and -o go with --pred/--ref (a model is evaluated into its evaluation/ folder)")
        if self.prompt not in PROMPTS:
            raise UserError(f"unknown --prompt {self.prompt!r} ({', '.join(PROMPTS)})")
        if self.cases is not None and self.cases < 1:
            raise UserError(f"--cases must be at least 1, got {self.cases}")
        if self.nsd_mm is not None and not (math.isfinite(self.nsd_mm) and self.nsd_mm >= 0):
            raise UserError(f"--nsd must be a tolerance in mm >= 0, got {self.nsd_mm}")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--np must be at least 1, got {self.workers}")


@dataclass
class EvaluateResult:
    """What ``segvol evaluate`` scored and wrote.

    Attributes:
        source: ``folders``, ``test`` (imagesTs/labelsTs) or ``cross-validation``.
        output: The folder the summaries were written to.
        summary: The content of ``summary.json`` (:func:`~segvolpipe.evaluation.metrics.summarise` plus extras).
        failures: ``[{"case", "file", "error"}]`` of cases not scored or not rotated.
        model: The model folder evaluated (None for ``folders``).
        rotation: The content of ``rotation.json`` (None without the rotation test).
        files: Every file written.
    """

    source: str
    output: Path
    summary: dict[str, Any]
    failures: list[dict[str, str]]
    model: Path | None = None
    rotation: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class _Case:
    case: str
    images: tuple[Path, ...]
    reference: Path
    prediction: Path
    fold: str | None = None


def run_evaluate(options: EvaluateOptions) -> EvaluateResult:
    """Score two folders (``pred``/``ref``) or evaluate a trained model; see the module docstring."""
    if options.pred is not None:
        return score_folders(options)
    return evaluate_model(options)


def score_folders(options: EvaluateOptions) -> EvaluateResult:
    """``--pred/--ref``: score every reference against the prediction of the same name; write the summaries."""
    pred, ref = Path(str(options.pred)), Path(str(options.ref))
    labels, labels_file = folder_labels(options.labels, options.dataset, ref)
    summary, failures = evaluate_folders(pred, ref, labels, options.hd95, options.nsd_mm,
                                         options.workers or default_workers(), options.progress)
    out = Path(options.output) if options.output else pred
    summary.update(source="folders", prediction_folder=str(pred), reference_folder=str(ref),
                   labels_file=str(labels_file), failures=failures)
    return EvaluateResult("folders", out, summary, failures, files=_write_summaries(out, summary))


def folder_labels(labels: str | None, dataset: str | None, ref: Path) -> tuple[dict[int, str], Path]:
    """``({value: name}, the dataset.json used)`` for ``--pred/--ref``: ``--labels``, else ``-d``, else beside ``ref``.

    Raises:
        UserError: none of them gives a dataset.json, or it is invalid.
    """
    if labels is not None:
        path = Path(labels) / "dataset.json" if Path(labels).is_dir() else Path(labels)
    elif dataset is not None:
        path = raw_root() / resolve_dataset(dataset, raw_root()) / "dataset.json"
    elif (ref.parent / "dataset.json").is_file():
        path = ref.parent / "dataset.json"
    else:
        raise UserError("which labels? give --labels DATASET_JSON or -d DATASET (no dataset.json beside the "
                        "reference folder)", ref)
    if not path.is_file():
        raise UserError("dataset.json not found", path)
    spec = DatasetSpec.from_json(read_json(path), path)
    return {value: name for name, value in spec.labels}, path


def evaluate_model(options: EvaluateOptions) -> EvaluateResult:
    """Score a trained model's test or cross-validation predictions, run the rotation test, draw the figures."""
    from segvolpipe.inference.model_folder import resolve_model_folder
    from segvolpipe.training.universal import dataset_folder, load_universal

    folder = resolve_model_folder(options.dataset, options.model, options.configuration, options.variant)
    universal = load_universal(folder)
    dataset, subfolder = None, ""
    if options.dataset is not None and (folder / "datasets").is_dir():  # a model that knows several datasets
        chosen = dataset_folder(folder, options.dataset).name
        if chosen != folder.parent.name:  # scored on another of its datasets, in evaluation/{DatasetXXX}/
            dataset = subfolder = chosen
    elif universal is not None:
        raise UserError(f"a universal model is evaluated on one of its datasets: add -d "
                        f"({', '.join(universal.datasets)})", folder)
    spec = load_dataset_spec(folder / "datasets" / dataset if dataset else folder)
    raw = raw_root() / (dataset or folder.parent.name)
    if not raw.is_dir():
        raise UserError("raw dataset not found: its reference labels are needed to evaluate the model", raw)
    out = folder / EVALUATION / subfolder
    out.mkdir(parents=True, exist_ok=True)
    with stage_lock(out, "evaluate"):
        remove_stale_temporaries(out)  # what a killed run was writing
        labels = {value: name for name, value in spec.labels}
        tested = _test_cases(folder, raw, spec, options, out, dataset)
        if tested is not None:
            source, (cases, failures, predictions) = "test", tested
        else:
            source, (cases, failures), predictions = ("cross-validation", _validation_cases(folder, raw, spec, subfolder),
                                                      None)
        if not cases and not failures:
            raise UserError(f"nothing to evaluate: no imagesTs/labelsTs in {raw} and no cross-validation "
                            "predictions (fold_k/validation/*.nii.gz): train with validation folds or add a test "
                            "split", folder)
        results, score_failures = _score(cases, labels, options)
        failures = sorted(failures + score_failures, key=lambda f: f["case"])
        summary = summarise(results, labels, nsd_mm=options.nsd_mm)
        summary.update(source=source, model=str(folder),
                       predictions=str(predictions) if predictions
                       else sorted({str(c.prediction.parent) for c in cases}),
                       failures=failures)
        result = EvaluateResult(source, out, summary, failures, folder, files=_write_summaries(out, summary))
        if predictions:
            result.files.append(predictions)
        scored = {r.case for r in results}
        by_name = {c.case: c for c in cases if c.case in scored}
        overlays = [by_name[c] for c in sorted(by_name)][: options.overlays]
        result.files += _write_figures(out, summary, overlays, folder)
        if options.rotate and by_name:
            chosen = [by_name[c] for c in sorted(by_name)][: options.cases]
            rotation_cases = [RotationCase(c.case, c.images, c.reference, c.fold,
                                           c.prediction if source == "test" else None) for c in chosen]
            settings = RotationSettings(options.angles, options.prompt, options.mode, options.sweep)
            result.rotation = run_rotation(folder, rotation_cases, settings, out, source, options.device,
                                           options.overwrite, options.progress, dataset)
            result.failures += [{"case": f["case"], "file": "", "error": f"rotation test: {f['error']}"}
                                for f in result.rotation["failures"]]
            result.files += [out / "rotation.json", out / "rotation_bars.png"]
            if options.sweep:
                result.files.append(out / "dice_vs_angle.png")
        return result


def _test_cases(folder: Path, raw: Path, spec: DatasetSpec, options: EvaluateOptions, out: Path,
                dataset: str | None) -> tuple[list[_Case], list[dict[str, str]], Path] | None:
    """Predict ``imagesTs`` into ``evaluation/test_predictions`` when ``labelsTs`` exists; None when it does not."""
    from segvolpipe.inference.stage import PredictOptions, run_predict

    if not ((raw / "imagesTs").is_dir() and (raw / "labelsTs").is_dir()):
        return None
    found, problems, _ = discover_cases(raw, spec, "Ts", require_labels=False)
    labelled = [c for c in found if c.label is not None]
    if not labelled:
        logger.info("%s holds no labelled test case: scoring the cross-validation predictions", raw / "labelsTs")
        return None
    output = out / TEST_PREDICTIONS
    predicted = run_predict(raw / "imagesTs", output, PredictOptions(
        model=str(folder), dataset=dataset, mode=options.mode, device=options.device, workers=options.workers or 1,
        overwrite=options.overwrite, progress=options.progress))
    failures = [_problem(p) for p in problems]
    cases = []
    for c in labelled:
        error = predicted.failed.get(c.case_id)
        if error is not None:
            failures.append({"case": c.case_id, "file": str(c.images[0]), "error": f"prediction failed: {error}"})
        else:
            cases.append(_case(c, output / f"{c.case_id}.nii.gz"))
    return cases, failures, output


def _validation_cases(folder: Path, raw: Path, spec: DatasetSpec,
                      subfolder: str = "") -> tuple[list[_Case], list[dict[str, str]]]:
    """Every fold's ``validation/{case}.nii.gz`` (a universal model's: ``validation/{DatasetXXX}/``) with its raw
    images and ``labelsTr`` reference (first fold wins)."""
    found, _, _ = discover_cases(raw, spec, "Tr", require_labels=False)
    by_case = {c.case_id: c for c in found}
    folds = sorted((p / subfolder for p in folder.glob("fold_*/validation") if (p / subfolder).is_dir()),
                   key=lambda p: _fold_order(p.parents[len(Path(subfolder).parts)].name.removeprefix("fold_")))
    cases: list[_Case] = []
    failures: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for validation in folds:
        fold = validation.parents[len(Path(subfolder).parts)].name.removeprefix("fold_")
        for path in sorted(validation.iterdir()):
            case = strip_nifti_suffix(path.name)
            if case is None or path.name.startswith("."):
                continue
            if case in seen:
                logger.warning("%s: also predicted by fold %s; scoring fold %s's prediction", path, seen[case],
                               seen[case])
                continue
            seen[case] = fold
            raw_case = by_case.get(case)
            if raw_case is None or raw_case.label is None:
                failures.append({"case": case, "file": str(path),
                                 "error": f"no training image and label of case {case} in {raw}"})
                continue
            cases.append(_case(raw_case, path, fold))
    return cases, failures


def _fold_order(fold: str) -> tuple[int, int | str]:
    return (0, int(fold)) if fold.isdigit() else (1, fold)


def _case(raw_case: RawCase, prediction: Path, fold: str | None = None) -> _Case:
    assert raw_case.label is not None
    return _Case(raw_case.case_id, raw_case.images, raw_case.label, prediction, fold)


def _problem(exc: UserError) -> dict[str, str]:
    name = Path(exc.path or "?").name
    return {"case": strip_nifti_suffix(name) or name, "file": exc.path or "", "error": exc.message}


def _score_job(job: tuple[str, Path, Path], labels: dict[int, str], hd95: bool,
               nsd_mm: float | None) -> CaseResult | dict[str, str]:
    case, prediction, reference = job
    try:
        return score_case(case, prediction, reference, labels, hd95=hd95, nsd_mm=nsd_mm)
    except UserError as exc:
        return {"case": case, "file": exc.path or str(prediction), "error": exc.message}


def _score(cases: list[_Case], labels: dict[int, str],
           options: EvaluateOptions) -> tuple[list[CaseResult], list[dict[str, str]]]:
    jobs = [(c.case, c.prediction, c.reference) for c in cases]
    score = partial(_score_job, labels=labels, hd95=options.hd95, nsd_mm=options.nsd_mm)
    results, failures = [], []
    for outcome in map_cases(score, jobs, options.workers or default_workers(), "scoring", options.progress):
        if isinstance(outcome.value, CaseResult):
            results.append(outcome.value)
        else:
            failures.append(outcome.value or {"case": outcome.item[0], "file": "", "error": str(outcome.error)})
    return results, failures


def _write_summaries(out: Path, summary: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_summary(out / "summary.json", summary)
    write_per_case_csv(out / "per_case.csv", summary)
    return [out / "summary.json", out / "per_case.csv"]


def _write_figures(out: Path, summary: dict[str, Any], overlays: list[_Case], folder: Path) -> list[Path]:
    """``dice_violins.png`` and ``overlay_{case}.png`` for the given cases."""
    from segvolpipe.evaluation.plots import dice_violins, overlay_slices

    rows = summary["metric_per_case"]
    scores = {name: [_dice(row, value) for row in rows] for value, name in summary["labels"].items()}
    title = f"{folder.parent.name}: {folder.name}\nDice per class ({summary['source']}, {len(rows)} cases)"
    dice_violins(out / "dice_violins.png", scores, title=title)
    written = [out / "dice_violins.png"]
    drawn = {f"overlay_{case.case}.png" for case in overlays}
    for stale in out.glob("overlay_*.png"):  # cases of an earlier evaluation (another dataset version, --cases)
        if stale.name not in drawn:
            stale.unlink()
    dice_by_case = {row["case"]: row for row in rows}
    for case in overlays:
        image, geometry = read_image(case.images)
        reference, _ = read_label(case.reference)
        prediction, _ = read_label(case.prediction)
        row = dice_by_case.get(case.case)
        dice = ", ".join(f"{name} {_dice(row, value):.2f}" for value, name in summary["labels"].items()) if row else ""
        overlay_slices(out / f"overlay_{case.case}.png", image, reference, prediction, spacing=geometry.spacing,
                       title=f"{case.case}: Dice {dice}")
        written.append(out / f"overlay_{case.case}.png")
    return written


def _dice(row: dict[str, Any], value: str) -> float:
    dice = row["metrics"].get(value, {}).get("Dice")
    return math.nan if dice is None else float(dice)

