"""The rotation test of ``segvol evaluate``: predict rotated volumes and compare with the upright ones.

Per case, on the canonical (z, y, x) = (S, A, R) grid of its image file:

* upright: the image predicted as it is (or, with text prompts, an existing prediction by the same model and
  settings, e.g. ``evaluation/test_predictions/{case}.nii.gz``), scored against the reference;
* rotated: image (cubic) and reference (nearest) rotated about the volume's centre by ``angles``
  (:mod:`segvolpipe.evaluation.rotation`, field of view kept), the rotated image predicted, scored against the
  rotated reference;
* drop: upright − rotated Dice, per class;
* consistency: Dice between ``rotate_label(upright prediction)`` and the rotated prediction inside
  :func:`~segvolpipe.evaluation.rotation.valid_mask` (the voxels both views saw);
* sweep (optional): rotated Dice for each angle about the longitudinal axis only.

Prompts (:func:`~segvolpipe.inference.prompts.reference_targets`): ``text`` names every class; ``box`` gives each
class present in the reference the bounding box of its reference voxels (of the *rotated* reference for rotated
inputs), passed to the predictor in world mm; ``points`` gives it three positive points drawn from those voxels
(seeded); ``box+text`` gives the box and the name. A class absent from the reference gets no spatial prompt
(nothing is predicted for it, so its Dice is NaN by the empty-reference policy, or 0 if another target paints it). The ``unet`` variant ignores
prompts.

Means: a class's upright, rotated and consistency means are NaN-means over cases; its drop is the mean of the
per-case drops where both Dice values exist; the ``mean`` row averages the classes (nnU-Net's
``foreground_mean``). The per-case records are kept in ``rotation.json`` together with a key of the model and the
settings, so a rerun (or an interrupted run) redoes only cases whose inputs or settings changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segvolpipe.errors import UserError
from segvolpipe.evaluation.metrics import dice_scores
from segvolpipe.evaluation.rotation import consistency_dice, rotate_image, rotate_label, valid_mask
from segvolpipe.io.atomic import json_safe, read_json, write_json
from segvolpipe.io.dataset import files_hash
from segvolpipe.io.nifti import Geometry, read_image, read_label
from segvolpipe.log import logger, progress_bar

PROMPTS = ("text", "box", "points", "box+text")
RECORD = "rotation.json"
MEASURES = ("upright", "rotated", "drop", "consistency")


@dataclass(frozen=True)
class RotationCase:
    """One case of the rotation test.

    Attributes:
        case: Case name.
        images: Channel files, in channel order.
        reference: Reference label file (on the image's grid).
        fold: The fold whose model predicts it (cross-validation: the fold that did not train on it); None: all.
        upright: An upright prediction by the same model and settings with text prompts, reused when present.
    """

    case: str
    images: tuple[Path, ...]
    reference: Path
    fold: str | None = None
    upright: Path | None = None


@dataclass(frozen=True)
class RotationSettings:
    """What the rotation test does: ``angles`` (radians about S, A, R), prompts, inference mode, sweep (degrees)."""

    angles: tuple[float, float, float]
    prompt: str = "text"
    mode: str | None = None
    sweep: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise UserError(f"unknown --prompt {self.prompt!r} ({', '.join(PROMPTS)})")
        if len(self.angles) != 3 or not all(math.isfinite(a) for a in self.angles):
            raise UserError(f"rotation angles must be three finite numbers, got {self.angles}")

    def to_json(self) -> dict[str, Any]:
        a_s, a_a, a_r = self.angles
        return {"angles_rad": list(self.angles),
                "angles": f"{math.degrees(a_s):g}° about S, {a_a:g} rad about A, {a_r:g} rad about R",
                "prompt": self.prompt, "mode": self.mode, "sweep_deg": list(self.sweep) or None}


def predict_label(predictor: Any, image: np.ndarray, geometry: Geometry, reference: np.ndarray, prompt: str,
                  path: str) -> tuple[np.ndarray, float]:
    """``(label [Z, Y, X] on the canonical grid, seconds)`` of one image with prompts per ``prompt``."""
    start = time.perf_counter()
    from segvolpipe.inference.prompts import reference_targets

    if not predictor.promptable or prompt == "text":
        targets = predictor.targets()
    else:
        targets = reference_targets(predictor.labels, reference, geometry.canonical_affine, prompt)
    if not targets:  # no class present to put a box on: nothing is predicted
        return np.zeros(geometry.canonical_shape, dtype=np.uint16), time.perf_counter() - start
    label = predictor.predict(image, geometry, targets, path).label
    return label, time.perf_counter() - start


def rotated_prediction(predictor: Any, image: np.ndarray, reference: np.ndarray, affine: np.ndarray,
                       angles: Sequence[float], prompt: str, path: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Rotate image and reference by ``angles`` and predict: ``(rotated reference, rotated prediction, seconds)``.

    The rotated grid keeps the canonical axis directions (and spacing), so it is its own canonical grid.
    """
    rot_image, rot_affine = rotate_image(image, affine, angles)
    rot_ref, _ = rotate_label(reference, affine, angles)
    geometry = Geometry.from_affine(rot_affine, rot_ref.shape)
    label, seconds = predict_label(predictor, rot_image.astype(np.float32, copy=False), geometry, rot_ref, prompt,
                                   path)
    return rot_ref, label, seconds


def rotation_case(predictor: Any, case: RotationCase, settings: RotationSettings) -> dict[str, Any]:
    """The rotation test of one case; returns its record (Dice per class name, NaN where undefined)."""
    image, geometry = read_image(case.images)
    reference, ref_geometry = read_label(case.reference)
    if not geometry.same_grid(ref_geometry):
        raise UserError(f"reference is not on the grid of {case.images[0].name}", case.reference)
    names = dict(predictor.labels)
    values = sorted(names)
    affine = np.asarray(geometry.canonical_affine)
    path = str(case.images[0])
    upright, seconds_up, reused = None, 0.0, False
    if case.upright is not None and settings.prompt == "text" and case.upright.is_file():
        upright, up_geometry = read_label(case.upright)
        reused = up_geometry.same_grid(geometry)
        upright = upright if reused else None
    if upright is None:
        upright, seconds_up = predict_label(predictor, image, geometry, reference, settings.prompt, path)
    rot_ref, rot_pred, seconds_rot = rotated_prediction(predictor, image, reference, affine, settings.angles,
                                                        settings.prompt, path)
    rot_up, _ = rotate_label(upright, affine, settings.angles)
    mask = valid_mask(reference.shape, affine, settings.angles)
    up = dice_scores(upright, reference, values)
    rot = dice_scores(rot_pred, rot_ref, values)
    record: dict[str, Any] = {
        "status": "done",
        "fold": case.fold,
        "upright": _named(up, names),
        "rotated": _named(rot, names),
        "drop": _named({v: up[v] - rot[v] for v in values}, names),
        "consistency": _named(consistency_dice(rot_up, rot_pred, mask, values), names),
        "upright_reused": reused,
        "rotated_shape": list(rot_ref.shape),
        "seconds": {"upright": None if reused else round(seconds_up, 3), "rotated": round(seconds_rot, 3)},
    }
    if settings.sweep:
        record["sweep"] = {}
        for degrees in settings.sweep:
            if degrees % 360 == 0:  # the same input as upright: the same prediction
                record["sweep"][f"{degrees:g}"] = record["upright"]
                continue
            ref_a, pred_a, _ = rotated_prediction(predictor, image, reference, affine, (math.radians(degrees), 0, 0),
                                                  settings.prompt, path)
            record["sweep"][f"{degrees:g}"] = _named(dice_scores(pred_a, ref_a, values), names)
    return record


def aggregate(cases: Mapping[str, Mapping[str, Any]], names: Sequence[str],
              sweep: Sequence[float] = ()) -> dict[str, Any]:
    """Per-class means, the mean over classes, the sweep curves and mean seconds of the cases done."""
    done = [c for c in cases.values() if c.get("status") == "done"]
    classes = {}
    for name in names:
        up, rot, cons = ([_num(c[k].get(name)) for c in done] for k in ("upright", "rotated", "consistency"))
        drops = [u - r for u, r in zip(up, rot, strict=True) if math.isfinite(u) and math.isfinite(r)]
        classes[name] = {"upright": _mean(up), "rotated": _mean(rot), "drop": _mean(drops),
                         "consistency": _mean(cons), "n_cases": sum(math.isfinite(r) for r in rot)}
    out: dict[str, Any] = {
        "classes": classes,
        "mean": {k: _mean([classes[n][k] for n in names]) for k in MEASURES},
        "n_cases": len(done),
        "seconds_per_case": {k: _mean([_num(c["seconds"].get(k)) for c in done]) for k in ("upright", "rotated")},
        "sweep": None,
    }
    if sweep:
        keys = [f"{a:g}" for a in sweep]
        curves = {n: [_mean([_num(c["sweep"][k].get(n)) for c in done if k in c.get("sweep", {})]) for k in keys]
                  for n in names}
        out["sweep"] = {"angles_deg": list(sweep), "classes": curves,
                        "mean": [_mean([curves[n][i] for n in names]) for i in range(len(keys))]}
    return out


def run_rotation(folder: Path, cases: Sequence[RotationCase], settings: RotationSettings, out: Path,
                 source: str, device: str = "auto", overwrite: bool = False, progress: bool = True,
                 dataset: str | None = None) -> dict[str, Any]:
    """Run the rotation test on ``cases`` with the model of ``folder``; write ``out/rotation.json`` and its figures.

    Cases already done with the same model, settings and input files (recorded in ``rotation.json``) are kept;
    ``rotation.json`` is rewritten after every case, so an interrupted run continues where it stopped.

    Returns:
        The content of ``rotation.json``; failed cases carry ``status: failed`` and ``error``.
    """
    from segvolpipe.inference.predictor import Predictor

    out.mkdir(parents=True, exist_ok=True)
    key = _settings_key(folder, settings, source)
    previous = {} if overwrite else _previous_cases(out / RECORD, key)
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for case in cases:
        inputs = files_hash([*case.images, case.reference, *([case.upright] if _reusable(case, settings) else [])])
        old = previous.get(case.case)
        if old and old.get("status") == "done" and old.get("inputs") == inputs:
            records[case.case] = old
        else:
            todo.append((case, inputs))
    if len(todo) < len(cases):
        logger.info("rotation test: %d case(s) already done with these settings (--overwrite redoes them)",
                    len(cases) - len(todo))
    state: dict[str, Any] = {"predictor": None, "fold": object(), "mode": None}

    def predictor_for(fold: str | None) -> Predictor:
        if state["fold"] != fold:
            state["predictor"] = None  # free the previous fold's model first
            state["predictor"] = Predictor(folder, folds=None if fold is None else (fold,), mode=settings.mode,
                                           device=device, dataset=dataset)
            state["fold"], state["mode"] = fold, state["predictor"].mode
        return state["predictor"]

    names = _class_names(folder, dataset)
    mode = next((r.get("mode") for r in records.values() if r.get("mode")), settings.mode)

    def save() -> dict[str, Any]:
        ordered = dict(sorted(records.items()))
        payload = {"model": str(folder), "variant": folder.name.split("__")[0],
                   "configuration": folder.name.split("__", 1)[-1], "source": source,
                   "settings": {**settings.to_json(), "mode": state["mode"] or mode, "key": key},
                   **aggregate(ordered, names, settings.sweep), "cases": ordered,
                   "failures": [{"case": c, "error": r["error"]} for c, r in ordered.items()
                                if r.get("status") == "failed"]}
        payload = json_safe(payload)
        write_json(out / RECORD, payload)
        return payload

    with progress_bar(progress) as bar:
        task = bar.add_task("rotation test", total=len(todo))
        for case, inputs in sorted(todo, key=lambda t: (t[0].fold or "", t[0].case)):
            predictor = predictor_for(case.fold)  # a model that cannot load stops the test (one line, exit 2)
            try:
                record = rotation_case(predictor, case, settings)
                record.update(inputs=inputs, mode=state["mode"])
            except UserError as exc:
                record = {"status": "failed", "fold": case.fold, "error": exc.line()}
                logger.error("%s: %s", case.case, exc.line())
            records[case.case] = record
            save()
            bar.advance(task)
    payload = save()
    write_rotation_figures(out, payload)
    return payload


def write_rotation_figures(out: Path, report: Mapping[str, Any]) -> list[Path]:
    """``rotation_bars.png`` and, when swept, ``dice_vs_angle.png`` from a ``rotation.json`` payload."""
    from segvolpipe.evaluation.plots import dice_vs_angle, rotation_bars

    variant, classes = str(report["variant"]), list(report["classes"])
    settings = report["settings"]
    title = f"{report['variant']} ({report['configuration']}), {settings['prompt']} prompts\n{settings['angles']}"
    rotation_bars(out / "rotation_bars.png", classes, {variant: _column(report, "upright")},
                  {variant: _column(report, "rotated")}, title=title)
    written = [out / "rotation_bars.png"]
    sweep = report.get("sweep")
    if sweep:
        curves = {variant: {**{n: _nums(v) for n, v in sweep["classes"].items()}, "mean": _nums(sweep["mean"])}}
        dice_vs_angle(out / "dice_vs_angle.png", sweep["angles_deg"], curves,
                      title=f"{variant}: Dice against rotation about S\n({settings['prompt']} prompts)")
        written.append(out / "dice_vs_angle.png")
    return written


def _column(report: Mapping[str, Any], measure: str) -> list[float]:
    return [_num(c.get(measure)) for c in report["classes"].values()]


def _class_names(folder: Path, dataset: str | None = None) -> list[str]:
    from segvolpipe.planning.plans import load_plans
    from segvolpipe.training.universal import dataset_folder

    plans = load_plans((dataset_folder(folder, dataset) if dataset else folder) / "plans.json")
    return [n for v, n in sorted(plans.label_names.items()) if v > 0]


def _reusable(case: RotationCase, settings: RotationSettings) -> bool:
    return case.upright is not None and settings.prompt == "text" and case.upright.is_file()


def _settings_key(folder: Path, settings: RotationSettings, source: str) -> str:
    """A hash of the model's files (plans, every fold's final checkpoint), the settings and the case source."""
    files = sorted([folder / "plans.json", *folder.glob("fold_*/checkpoint_final.pt")])
    stats = [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    text = json.dumps([str(folder.resolve()), stats, settings.to_json(), source], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _previous_cases(path: Path, key: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        previous = read_json(path)
    except UserError:  # a damaged record only means nothing is reused
        return {}
    return previous.get("cases", {}) if previous.get("settings", {}).get("key") == key else {}


def _named(scores: Mapping[int, float], names: Mapping[int, str]) -> dict[str, float]:
    return {names[v]: float(s) for v, s in scores.items()}


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _nums(values: Iterable[Any]) -> list[float]:
    return [_num(v) for v in values]


def _mean(values: Iterable[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return float(np.mean(kept)) if kept else math.nan

