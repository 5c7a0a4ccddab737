"""The volume the graph is built on: put in units of its own noise, then denoised.

FH's criterion compares edge weights with the largest edge already inside a region (plus ``k/|C|``). With
raw noise the largest inner edge of a big region grows with the region, so a liver that has swept up
enough noisy voxels also swallows the kidney beside it; a Gaussian blur (SegVol's σ 0.8) lowers the noise
but also the steps at organ borders. Total-variation denoising (Rudin–Osher–Fatemi, Chambolle's
algorithm, scikit-image) flattens the inside of organs and keeps their borders, so the largest inner edge
stays small and the border steps stay large.

Everything is expressed in units of the image's noise σ̂ (robust: the median absolute difference of
neighbouring foreground voxels along the in-plane axes, over 0.6745·√2), so that one ``k`` and one TV
weight serve CT in any normalisation and MRI in arbitrary units alike.

* ``"tv"`` (default): ``denoise_tv_chambolle(volume / σ̂, weight=tv_weight)``; the graph then uses no
  Gaussian (its ``sigma`` is ignored).
* ``"gaussian"``: ``volume / σ̂``; the graph blurs it with ``sigma`` (SegVol's code).
"""

from __future__ import annotations

import numpy as np

from segvolpipe.errors import UserError, check_choice

DENOISERS: tuple[str, ...] = ("tv", "gaussian")
_MAD_TO_STD = 0.6745 * np.sqrt(2.0)  # median |a - b| of two independent N(0, σ²) draws = 0.6745·√2·σ
_MEAN_TO_STD = np.sqrt(np.pi)  # mean |a - b| of the same = 2σ/√π


def check_denoise(name: str) -> str:
    """Return ``name`` (lower-cased) when it is a known denoiser, else raise with a "did you mean" hint."""
    return check_choice(str(name).strip().lower(), DENOISERS, "pseudo-mask denoiser")


def noise_sigma(volume: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Robust noise standard deviation of a volume [Z, Y, X].

    Differences between face neighbours along the finest axes (the in-plane ones of a scan with thick
    slices, where neighbours are closest and anatomy changes least), both voxels in SegVol's foreground
    (above the volume's mean); σ̂ = median |difference| / (0.6745·√2). When more than half of the
    differences are exactly zero (integer images with little noise) the mean absolute difference is used
    instead; a constant volume gives 1.0.

    Args:
        volume: Image [Z, Y, X].
        spacing: Voxel size (z, y, x) in mm.

    Returns:
        σ̂ > 0, in the volume's intensity units.
    """
    from segvolpipe.pseudomask.metrics import body_mask

    vol = np.asarray(volume, dtype=np.float32)
    finest = min(spacing)
    axes = [a for a in range(3) if spacing[a] <= 1.5 * finest and vol.shape[a] > 1] or [int(np.argmax(vol.shape))]
    body = body_mask(vol)
    diffs = []
    for a in axes:
        lo = tuple(slice(0, -1) if i == a else slice(None) for i in range(3))
        hi = tuple(slice(1, None) if i == a else slice(None) for i in range(3))
        diffs.append(np.abs(vol[hi] - vol[lo])[body[lo] & body[hi]])
    d = np.concatenate(diffs)
    if d.size == 0:
        return 1.0
    sigma = float(np.median(d)) / _MAD_TO_STD
    if sigma <= 0:
        sigma = float(d.mean()) * _MEAN_TO_STD / 2.0
    return sigma if sigma > 0 and np.isfinite(sigma) else 1.0


def prepare(
    volume: np.ndarray, spacing: tuple[float, float, float], denoise: str = "tv", tv_weight: float = 1.0
) -> tuple[np.ndarray, float]:
    """The graph's input: ``volume`` divided by its noise σ̂, TV-denoised for ``denoise="tv"``.

    Args:
        volume: Image [Z, Y, X] (any intensity scale).
        spacing: Voxel size (z, y, x) in mm.
        denoise: ``"tv"`` or ``"gaussian"`` (the Gaussian itself is applied by the graph).
        tv_weight: Chambolle's weight in units of σ̂ (larger → flatter regions).

    Returns:
        ``(float32 [Z, Y, X] in units of σ̂, σ̂)``.
    """
    denoise = check_denoise(denoise)
    if tv_weight <= 0:
        raise ValueError(f"tv_weight must be > 0, got {tv_weight}")
    sigma = noise_sigma(volume, spacing)
    work = np.asarray(volume, dtype=np.float32) / np.float32(sigma)
    if denoise == "tv":
        from skimage.restoration import denoise_tv_chambolle

        work = denoise_tv_chambolle(work, weight=float(tv_weight), channel_axis=None)
    return np.ascontiguousarray(work, dtype=np.float32), sigma


def check_settings(denoise: str, tv_weight: float) -> None:
    """Raise :class:`UserError` for an unknown denoiser or a non-positive TV weight."""
    check_denoise(denoise)
    if not tv_weight > 0:
        raise UserError(f"--tv-weight must be > 0 (in units of the image's noise), got {tv_weight}")
