"""Segmentation metrics per case and class, nnU-Net's ``summary.json`` layout, and folder evaluation.

Overlap metrics (Dice, IoU, TP, FP, FN, voxel counts, volumes in ml) are counted here; the surface
metrics HD95 (95th-percentile symmetric Hausdorff distance, mm) and NSD (normalised surface Dice at a
tolerance in mm) come from MONAI and are computed only when asked, because they are slow.

Empty-reference policy, the same everywhere in the package:

==========================  =========  ========  ========  ==========================================
reference / prediction      Dice, IoU  HD95      NSD       in the means
==========================  =========  ========  ========  ==========================================
both empty                  NaN        NaN       NaN       excluded (nnU-Net's convention)
reference empty, pred not   0          NaN       0         Dice, IoU, NSD count as 0; HD95 excluded
reference not, pred empty   0          NaN       0         Dice, IoU, NSD count as 0; HD95 excluded
both non-empty              computed   computed  computed  included
==========================  =========  ========  ========  ==========================================

HD95 has no finite value when one side has no surface (MONAI reports inf); it is NaN here so that means
and JSON stay finite, while the false positives or the miss still show in Dice, FP and FN. NaN is
written as JSON ``null`` and means skip it (``nanmean``); a mean with nothing to average is ``null``.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from segvolpipe.errors import UserError
from segvolpipe.io.atomic import atomic_path, write_json
from segvolpipe.io.nifti import AFFINE_ATOL, AFFINE_RTOL, Geometry, read_label, strip_nifti_suffix
from segvolpipe.log import logger
from segvolpipe.parallel import map_cases

EMPTY_REFERENCE_POLICY = (
    "both empty: Dice/IoU/HD95/NSD NaN (null), excluded from means; one side empty: Dice 0, IoU 0, NSD 0, "
    "HD95 NaN (null, excluded from means)"
)
# Per-class metric keys, in nnU-Net's spelling first; HD95 and NSD only appear when computed.
METRIC_KEYS = ("Dice", "IoU", "TP", "FP", "FN", "n_pred", "n_ref", "pred_ml", "ref_ml", "HD95", "NSD")


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one case.

    Attributes:
        dice, iou: Overlap scores; NaN when the class is absent from both maps.
        tp, fp, fn: True positive, false positive and false negative voxel counts.
        n_pred, n_ref: Voxels of the class in the prediction and in the reference.
        pred_ml, ref_ml: Their volumes in millilitres (voxels × voxel volume in mm³ / 1000).
        hd95: 95th-percentile symmetric Hausdorff distance in mm; None when not computed, NaN when undefined.
        nsd: Normalised surface Dice at the chosen tolerance; None when not computed, NaN when undefined.
    """

    dice: float
    iou: float
    tp: int
    fp: int
    fn: int
    n_pred: int
    n_ref: int
    pred_ml: float
    ref_ml: float
    hd95: float | None = None
    nsd: float | None = None

    def __post_init__(self) -> None:
        if self.tp + self.fp != self.n_pred or self.tp + self.fn != self.n_ref:
            raise ValueError(f"inconsistent counts: {self}")

    def to_json(self) -> dict[str, float | int | None]:
        """nnU-Net's keys (``Dice``, ``IoU``, ``TP`` ...), NaN as None; HD95/NSD only when computed."""
        out: dict[str, float | int | None] = {
            "Dice": _finite_or_none(self.dice),
            "IoU": _finite_or_none(self.iou),
            "TP": self.tp,
            "FP": self.fp,
            "FN": self.fn,
            "n_pred": self.n_pred,
            "n_ref": self.n_ref,
            "pred_ml": self.pred_ml,
            "ref_ml": self.ref_ml,
        }
        if self.hd95 is not None:
            out["HD95"] = _finite_or_none(self.hd95)
        if self.nsd is not None:
            out["NSD"] = _finite_or_none(self.nsd)
        return out


@dataclass(frozen=True)
class CaseResult:
    """The metrics of one scored case, per class value."""

    case: str
    prediction_file: str
    reference_file: str
    metrics: Mapping[int, ClassMetrics]


def class_overlap(pred: np.ndarray, ref: np.ndarray, voxel_ml: float = 0.0) -> ClassMetrics:
    """Overlap metrics of two boolean masks of the same shape (any number of dimensions)."""
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref))
    fp, fn = n_pred - tp, n_ref - tp
    if n_pred + n_ref == 0:
        dice = iou = math.nan
    else:
        dice, iou = 2.0 * tp / (n_pred + n_ref), tp / (tp + fp + fn)
    return ClassMetrics(dice, iou, tp, fp, fn, n_pred, n_ref, n_pred * voxel_ml, n_ref * voxel_ml)


def dice_scores(pred: np.ndarray, ref: np.ndarray, values: Sequence[int]) -> dict[int, float]:
    """Dice per class value (NaN when the class is in neither map); any shape, e.g. masked 1D arrays."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return {int(v): class_overlap(pred == v, ref == v).dice for v in values}


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    values: Sequence[int],
    spacing: Sequence[float],
    hd95: bool = False,
    nsd_mm: float | None = None,
) -> dict[int, ClassMetrics]:
    """Metrics of every class value of one case.

    Args:
        pred: int [Z, Y, X] predicted label map.
        ref: int [Z, Y, X] reference label map on the same grid.
        values: The class values to score (background excluded by the caller).
        spacing: Voxel size in mm along the array axes.
        hd95: Also compute the 95th-percentile Hausdorff distance (slow).
        nsd_mm: Also compute the normalised surface Dice at this tolerance in mm (slow).

    Returns:
        ``{value: ClassMetrics}`` in the order of ``values``.

    Raises:
        ValueError: shapes differ, or ``spacing`` does not have one entry per axis.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {ref.ndim}D array")
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    out: dict[int, ClassMetrics] = {}
    for v in values:
        p, r = pred == v, ref == v
        m = class_overlap(p, r, voxel_ml)
        if hd95 or nsd_mm is not None:
            h, n = surface_metrics(p, r, spacing, hd95=hd95, nsd_mm=nsd_mm)
            m = replace(m, hd95=h, nsd=n)
        out[int(v)] = m
    return out


def surface_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    hd95: bool = True,
    nsd_mm: float | None = None,
) -> tuple[float | None, float | None]:
    """``(HD95 mm, NSD)`` of two boolean 3D masks through MONAI; None for what was not asked.

    HD95 is symmetric: the larger of the two directed 95th percentiles of surface-voxel distances (MONAI's
    ``percentile=95``). NSD counts surface voxels of either mask within ``nsd_mm`` of the other surface.

    Both masks are cropped to the bounding box of their union and padded with one background voxel, so a
    mask touching the array border has a surface there and the cost follows the object, not the volume.
    """
    want_nsd = nsd_mm is not None
    if want_nsd and not (math.isfinite(nsd_mm) and nsd_mm >= 0):
        raise ValueError(f"NSD tolerance must be a finite number of mm >= 0, got {nsd_mm}")
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not (has_p and has_r):  # the empty-reference policy of the module docstring
        nsd = (math.nan if not (has_p or has_r) else 0.0) if want_nsd else None
        return (math.nan if hd95 else None), nsd
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    idx = np.argwhere(pred | ref)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(idx.min(0), idx.max(0), strict=True))
    p, r = (torch.from_numpy(np.pad(m[box], 1)[None, None].astype(np.float32)) for m in (pred, ref))
    sp = [float(s) for s in spacing]
    h = n = None
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal use of a deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        if hd95:
            h = float(
                compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp)[0, 0]
            )
        if want_nsd:
            n = float(compute_surface_dice(p, r, [float(nsd_mm)], include_background=True, spacing=sp)[0, 0])
    return h, n


def summarise(
    results: Sequence[CaseResult], labels: Mapping[int, str], nsd_mm: float | None = None
) -> dict[str, Any]:
    """nnU-Net's ``summary.json`` layout, with extras a human can read.

    Args:
        results: Scored cases (any order; sorted by case name here).
        labels: ``{value: name}``; value 0 (background) is not scored.
        nsd_mm: The NSD tolerance, recorded when NSD was computed.

    Returns:
        A JSON-ready dict (NaN already None): ``labels`` (``{"1": "liver"}``), ``foreground_mean`` (mean over
        classes of the per-class means), ``mean`` (per class, nan-mean over cases), ``metric_per_case``
        (``case``, ``prediction_file``, ``reference_file``, ``metrics`` ``{"1": {"Dice": ...}}``), ``n_cases``
        and the ``empty_reference_policy``.
    """
    values = [v for v in sorted(labels) if v != 0]
    per_case = [
        {
            "case": r.case,
            "prediction_file": r.prediction_file,
            "reference_file": r.reference_file,
            "metrics": {str(v): r.metrics[v].to_json() for v in values if v in r.metrics},
        }
        for r in sorted(results, key=lambda r: r.case)
    ]
    mean: dict[str, dict[str, float | None]] = {}
    for v in values:
        rows = [c["metrics"][str(v)] for c in per_case if str(v) in c["metrics"]]
        keys = [k for k in METRIC_KEYS if any(k in row for row in rows)]
        mean[str(v)] = {k: _nanmean([row.get(k) for row in rows]) for k in keys}
    keys = [k for k in METRIC_KEYS if any(k in m for m in mean.values())]
    summary: dict[str, Any] = {
        "labels": {str(v): labels[v] for v in values},
        "foreground_mean": {k: _nanmean([m.get(k) for m in mean.values()]) for k in keys},
        "mean": mean,
        "metric_per_case": per_case,
        "n_cases": len(per_case),
        "empty_reference_policy": EMPTY_REFERENCE_POLICY,
    }
    if nsd_mm is not None:
        summary["nsd_tolerance_mm"] = float(nsd_mm)
    return summary


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> None:
    """Write a summary as valid JSON (NaN and inf as null), atomically, with schema version and provenance."""
    write_json(path, dict(summary))


def write_per_case_csv(path: str | Path, summary: Mapping[str, Any]) -> None:
    """One row per case and class: case, files, class value, class name and every metric, atomically."""
    rows = summary["metric_per_case"]
    keys = [k for k in METRIC_KEYS if any(k in m for row in rows for m in row["metrics"].values())]
    names = summary.get("labels", {})
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "class", "name", *keys, "prediction_file", "reference_file"])
        for row in rows:
            for value, m in row["metrics"].items():
                cells = ["" if _finite_or_none(m.get(k)) is None else m[k] for k in keys]
                files = [row["prediction_file"], row["reference_file"]]
                writer.writerow([row["case"], value, names.get(value, ""), *cells, *files])


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: Mapping[int, str],
    hd95: bool = False,
    nsd_mm: float | None = None,
    workers: int = 1,
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Score every ``{case}.nii.gz`` / ``{case}.nii`` of ``ref_dir`` against the same name in ``pred_dir``.

    Both files are read onto their canonical grids; the prediction must lie on the reference's grid (same
    voxels in the world: the same canonical shape and affine, whatever orientation each file is stored in).
    A case that cannot be scored (no prediction, unreadable file, another grid, a label value not in
    ``labels``) becomes a failure and the others are still scored. Volumes and surface distances use the
    reference's spacing. Predictions without a reference are logged and skipped.

    Args:
        pred_dir, ref_dir: Folders of predicted and reference label maps.
        labels: ``{value: name}`` of the dataset (background 0 may be included; it is not scored).
        hd95, nsd_mm: Surface metrics, see :func:`case_metrics`.
        workers: Processes to use.
        progress: Show a progress bar.

    Returns:
        ``(summary, failures)``: :func:`summarise`'s dict and ``[{"case", "file", "error"}]``.

    Raises:
        UserError: a folder is missing, the reference folder holds no NIfTI file, or a case has two files.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    refs, preds = _nifti_files(ref_dir, "reference"), _nifti_files(pred_dir, "prediction")
    if not refs:
        raise UserError("no reference label files (.nii.gz or .nii) in this folder", ref_dir)
    failures = [
        {"case": case, "file": str(ref), "error": f"no prediction for case {case} in {pred_dir}"}
        for case, ref in refs.items()
        if case not in preds
    ]
    extra = sorted(set(preds) - set(refs))
    if extra:
        logger.warning(
            "%d prediction(s) without a reference, not scored: %s", len(extra), ", ".join(extra[:5])
        )
    jobs = [(case, preds[case], ref) for case, ref in refs.items() if case in preds]
    score = partial(_score_or_fail, labels=dict(labels), hd95=hd95, nsd_mm=nsd_mm)
    results: list[CaseResult] = []
    for outcome in map_cases(score, jobs, workers=workers, description="evaluating", progress=progress):
        value = outcome.value
        if isinstance(value, CaseResult):
            results.append(value)
        else:  # a dict describing the failure (or, should map_cases capture an error itself, its line)
            case, pred_path, _ = outcome.item
            failures.append(value or {"case": case, "file": str(pred_path), "error": str(outcome.error)})
    return summarise(results, labels, nsd_mm=nsd_mm), sorted(failures, key=lambda f: f["case"])


def score_case(
    case: str,
    pred_path: Path,
    ref_path: Path,
    labels: Mapping[int, str],
    hd95: bool = False,
    nsd_mm: float | None = None,
) -> CaseResult:
    """Read, check and score one case; a :class:`UserError` names the file at fault."""
    ref, ref_geom = read_label(ref_path)
    pred, pred_geom = read_label(pred_path)
    problem = _grid_difference(pred_geom, ref_geom)
    if problem:
        raise UserError(
            f"prediction is not on the grid of its reference {Path(ref_path).name}: {problem}", pred_path
        )
    values = [v for v in sorted(labels) if v != 0]
    for arr, path, what in ((pred, pred_path, "prediction"), (ref, ref_path, "reference")):
        unknown = _unknown_values(arr, [0, *values])
        if unknown:
            raise UserError(
                f"{what} holds label value(s) {unknown} not among the dataset's labels {values}", path
            )
    metrics = case_metrics(pred, ref, values, ref_geom.spacing, hd95=hd95, nsd_mm=nsd_mm)
    return CaseResult(case, str(pred_path), str(ref_path), metrics)


def _score_or_fail(job: tuple[str, Path, Path], **kwargs: Any) -> CaseResult | dict[str, str]:
    case, pred_path, ref_path = job
    try:
        return score_case(case, pred_path, ref_path, **kwargs)
    except UserError as exc:
        return {"case": case, "file": exc.path or str(pred_path), "error": exc.message}


def _nifti_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"{what} folder not found", folder)
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case = strip_nifti_suffix(path.name)
        if case is None or path.name.startswith(".") or not path.is_file():
            continue
        if case in out:
            raise UserError(f"two {what} files for case {case}: {out[case].name} and {path.name}", folder)
        out[case] = path
    return out


def _grid_difference(pred: Geometry, ref: Geometry) -> str | None:
    if pred.canonical_shape != ref.canonical_shape:
        return f"shape {pred.canonical_shape} vs {ref.canonical_shape} (canonical z, y, x)"
    a, b = np.asarray(pred.canonical_affine), np.asarray(ref.canonical_affine)
    if not np.allclose(a, b, atol=AFFINE_ATOL, rtol=AFFINE_RTOL):
        return f"affines differ by up to {np.abs(a - b).max():.4g} (spacing, orientation or origin)"
    return None


def _unknown_values(array: np.ndarray, allowed: Sequence[int]) -> list[int]:
    bad = np.isin(array, np.asarray(allowed), invert=True)
    return [int(v) for v in np.unique(array[bad])] if bad.any() else []


def _finite_or_none(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _nanmean(values: Sequence[float | int | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(kept)) if kept else None
