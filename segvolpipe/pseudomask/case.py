"""One case: preprocessed arrays → graph regions → cleaned pseudo-mask (+ ground truth) → files."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segvolpipe.errors import UserError
from segvolpipe.io.atomic import load_npy, read_json, save_npy, write_json
from segvolpipe.io.dataset import files_hash
from segvolpipe.pseudomask.clean import clean_regions, merge_ground_truth
from segvolpipe.pseudomask.metrics import best_match_dice, body_mask, box_voxels, coverage

SEGVOL_MIN_SIZE = 1000  # SegVol's code: components below 1000 voxels merge ...
SEGVOL_GRID_VOXELS = 256 * 256 * 32  # ... on its 256×256×32 working grid
MIN_SIZE_FLOOR = 8


@dataclass(frozen=True)
class PseudomaskSettings:
    """Everything that determines a pseudo-mask (recorded in every output's hash).

    ``min_fraction`` is SegVol's code's threshold: 0.001 *of the voxels* (0.1 %) of the body's bounding box
    (:meth:`min_voxels_for`), since SegVol cleans samples cropped to their foreground. One seed report says
    "0.001 %"; pass ``min_fraction=0.00001`` for that reading.

    ``min_size`` None (the default) scales SegVol's 1000 voxels on its 256×256×32 working grid to the volume
    segmented (:meth:`min_size_for`): 500 for a 64×128×128 volume, 232 for a 76×80×80 one. A fixed count
    meant for one grid swallows whole organs on a coarser one.

    ``denoise`` ``"tv"`` (the default) builds the graph on the volume in units of its noise σ̂, flattened by
    total-variation denoising of weight ``tv_weight`` (σ̂ units); ``"gaussian"`` blurs it with ``sigma``
    instead (SegVol's code). ``k`` is in σ̂ units either way (:mod:`segvolpipe.pseudomask.denoise`).
    ``rule`` ``"percentile"`` (SegVol's shipped rule, the default: on TV-denoised volumes it matched or beat ``"fh"``
    on four of five phantom and MRI datasets, BENCHMARKS.md) or ``"fh"`` (Felzenszwalb–Huttenlocher's criterion).
    SegVol's exact recipe: ``denoise="gaussian", diagonals=True, working_grid=(32, 256, 256)``.
    """

    rule: str = "percentile"
    k: float = 1.5
    sigma: float = 0.8
    denoise: str = "tv"
    tv_weight: float = 1.0
    min_size: int | None = None
    min_fraction: float = 0.001
    percentile: float = 25.0
    diagonals: bool = False
    morphology: bool = True
    working_grid: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        from segvolpipe.pseudomask.denoise import check_settings
        from segvolpipe.pseudomask.graph import check_rule

        check_rule(self.rule)
        check_settings(self.denoise, self.tv_weight)
        if self.k <= 0 or self.sigma < 0 or (self.min_size is not None and self.min_size < 1) or not 0 <= self.min_fraction < 1:
            raise UserError("pseudomask settings: need k > 0, sigma ≥ 0, min-size ≥ 1 and 0 ≤ min-fraction < 1")
        if self.working_grid is not None and min(self.working_grid) < 2:
            raise UserError(f"--working-grid must be three sizes ≥ 2, got {self.working_grid}")

    def min_size_for(self, n_voxels: int) -> int:
        """Components smaller than this merge into a neighbour, for a volume of ``n_voxels`` voxels."""
        if self.min_size is not None:
            return self.min_size
        return max(MIN_SIZE_FLOOR, int(round(SEGVOL_MIN_SIZE * n_voxels / SEGVOL_GRID_VOXELS)))

    def min_voxels_for(self, body: np.ndarray) -> int:
        """Regions and pieces smaller than this are dropped: ``min_fraction`` of the body's bounding box.

        SegVol's code cleans each training sample after cropping it to the foreground (its
        ``CropForegroundd``), so its 0.1 % counts the voxels of the body's box, not the air around it;
        a case with no body falls back to the whole volume.
        """
        return max(1, int(round(self.min_fraction * (box_voxels(body) or body.size))))

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PseudomaskJob:
    case_id: str
    data_dir: Path  # preprocessed/DatasetX/{configuration}
    out_dir: Path  # preprocessed/DatasetX/pseudomasks/{configuration}
    settings: PseudomaskSettings
    class_ids: tuple[int, ...]
    qc: bool = True
    overwrite: bool = False


def _input_hash(job: PseudomaskJob) -> str:
    from segvolpipe import __version__

    files = [job.data_dir / f"{job.case_id}{s}" for s in (".npy", "_seg.npy", ".json")]
    return files_hash([f for f in files if f.exists()], extra=f"{job.settings.key()}|{__version__}")


def _load(job: PseudomaskJob) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    props_path = job.data_dir / f"{job.case_id}.json"
    data_path = job.data_dir / f"{job.case_id}.npy"
    if not props_path.exists() or not data_path.exists():
        missing = data_path if not data_path.exists() else props_path
        raise UserError("preprocessed file missing; rerun `segvol plan-preprocess`", missing)
    try:
        data = load_npy(data_path)
        seg_path = job.data_dir / f"{job.case_id}_seg.npy"
        seg = load_npy(seg_path) if seg_path.exists() else None
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"corrupt preprocessed array ({exc}); rerun `segvol plan-preprocess --overwrite`", data_path) from None
    if data.ndim != 4 or (seg is not None and seg.shape != data.shape[1:]):
        raise UserError(f"unexpected preprocessed shapes {data.shape} / {None if seg is None else seg.shape}", data_path)
    return data, seg, read_json(props_path)


def segment_case(
    image: np.ndarray, spacing: tuple[float, float, float], s: PseudomaskSettings
) -> tuple[np.ndarray, float]:
    """Raw graph regions of one volume [Z, Y, X], optionally on a working grid mapped back by nearest.

    Returns:
        ``(int32 region ids [Z, Y, X], the noise σ̂ estimated on the grid segmented)``.
    """
    from segvolpipe.preprocessing.resampling import resample_volume
    from segvolpipe.pseudomask.denoise import prepare
    from segvolpipe.pseudomask.graph import segment_graph

    shape = image.shape
    grid = tuple(int(v) for v in s.working_grid) if s.working_grid is not None else shape
    work, work_spacing = image, spacing
    if grid != shape:
        work = resample_volume(image, grid, "linear")
        work_spacing = tuple(sp * n / g for sp, n, g in zip(spacing, shape, grid, strict=True))  # type: ignore[assignment]
    work, noise = prepare(work, work_spacing, s.denoise, s.tv_weight)
    sigma = s.sigma if s.denoise == "gaussian" else 0.0
    regions = segment_graph(work, work_spacing, s.rule, s.k, sigma, s.min_size_for(work.size), s.percentile, s.diagonals)
    if grid != shape:
        regions = resample_volume(regions, shape, "nearest").astype(np.int32, copy=False)
    return regions, noise


def pseudomask_case(job: PseudomaskJob) -> dict[str, Any]:
    """Make, score and store one case's pseudo-mask; returns its summary (also written as ``{case}.json``)."""
    out_npy, out_json = job.out_dir / f"{job.case_id}.npy", job.out_dir / f"{job.case_id}.json"
    input_hash = _input_hash(job)
    if not job.overwrite and out_npy.exists() and out_json.exists():
        try:
            old = read_json(out_json)
            if old.get("input_hash") == input_hash:
                return {**old, "skipped": True}
        except UserError:
            pass
    t0 = time.perf_counter()
    data, seg, props = _load(job)
    image = np.asarray(data[0], dtype=np.float32)
    spacing = tuple(float(v) for v in props["target_spacing"])
    raw, noise = segment_case(image, spacing, job.settings)  # type: ignore[arg-type]
    body = body_mask(image)
    min_voxels = job.settings.min_voxels_for(body)
    cleaned = clean_regions(raw, body, min_voxels, job.settings.morphology)
    dice = best_match_dice(cleaned, seg, job.class_ids) if seg is not None else {}
    dice_raw = best_match_dice(raw, seg, job.class_ids) if seg is not None else {}
    n_classes = max(job.class_ids, default=0)
    final, kept = merge_ground_truth(cleaned, seg, n_classes) if seg is not None else (cleaned, int((np.unique(cleaned) > 0).sum()))
    save_npy(out_npy, final.astype(np.int32))
    if job.qc:
        from segvolpipe.pseudomask.qc import save_qc_png

        save_qc_png(job.out_dir / "qc" / f"{job.case_id}.png", image, final, seg, job.case_id)
    summary = {
        "case_id": job.case_id,
        "input_hash": input_hash,
        "regions_raw": int(raw.max(initial=0)),
        "regions_kept": kept,
        "min_voxels": min_voxels,
        "noise_sigma": noise,
        "coverage": coverage(cleaned, body),
        "ignored_fraction": float((cleaned == -1).mean()),
        "best_match_dice": {str(c): d for c, d in dice.items()},
        "best_match_dice_before_cleaning": {str(c): d for c, d in dice_raw.items()},
        "seconds": time.perf_counter() - t0,
    }
    write_json(out_json, summary)
    return {**summary, "skipped": False}
