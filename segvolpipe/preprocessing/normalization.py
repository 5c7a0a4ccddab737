"""Intensity normalisation schemes, an explicit registry keyed by scheme name.

``ct``        clip to the dataset's foreground 0.5/99.5 percentiles, z-score with the dataset's foreground
              mean/std (nnU-Net's CT scheme).
``segvol``    per volume: foreground = voxels above the volume mean; clip to its 0.05/99.95 percentiles;
              z-score with the clipped foreground's mean/std (SegVol's code).
``zscore``    per image z-score, within the non-zero mask when ``use_mask`` (zero outside). Default for
              every non-CT channel.
``rescale01`` per image min-max to [0, 1].
``none``      unchanged (float32).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from segvolpipe.errors import UserError, check_choice

EPS = 1e-8


@dataclass(frozen=True)
class ChannelNorm:
    """How one channel is normalised; dataset statistics are filled in only for dataset-level schemes."""

    channel: int
    name: str
    scheme: str
    use_mask: bool = False
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        check_scheme(self.scheme)
        if self.scheme == "ct" and None in (self.clip_low, self.clip_high, self.mean, self.std):
            raise ValueError("the ct scheme needs clip_low, clip_high, mean and std")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChannelNorm:
        return cls(**d)


Normalizer = Callable[[np.ndarray, "np.ndarray | None", ChannelNorm], np.ndarray]


def _ct(x: np.ndarray, mask: np.ndarray | None, p: ChannelNorm) -> np.ndarray:
    out = np.clip(x, p.clip_low, p.clip_high).astype(np.float32, copy=False)
    out -= np.float32(p.mean)
    out /= np.float32(max(float(p.std), EPS))
    return out


def _segvol(x: np.ndarray, mask: np.ndarray | None, p: ChannelNorm) -> np.ndarray:
    fg = x > x.mean()
    values = x[fg] if fg.any() else x.ravel()
    lo, hi = np.percentile(values, (0.05, 99.95))
    out = np.clip(x, lo, hi).astype(np.float32, copy=False)
    clipped = np.clip(values, lo, hi)
    out -= np.float32(clipped.mean())
    out /= np.float32(max(float(clipped.std()), EPS))
    return out


def _zscore(x: np.ndarray, mask: np.ndarray | None, p: ChannelNorm) -> np.ndarray:
    out = x.astype(np.float32, copy=True)
    if p.use_mask and mask is not None and mask.any():
        values = out[mask]
        out -= np.float32(values.mean())
        out /= np.float32(max(float(values.std()), EPS))
        out[~mask] = 0
        return out
    out -= np.float32(out.mean())
    out /= np.float32(max(float(out.std()), EPS))
    return out


def _rescale01(x: np.ndarray, mask: np.ndarray | None, p: ChannelNorm) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / max(hi - lo, EPS)).astype(np.float32)


def _none(x: np.ndarray, mask: np.ndarray | None, p: ChannelNorm) -> np.ndarray:
    return x.astype(np.float32, copy=False)


NORMALIZERS: dict[str, Normalizer] = {
    "ct": _ct,
    "segvol": _segvol,
    "zscore": _zscore,
    "rescale01": _rescale01,
    "none": _none,
}


def check_scheme(name: str) -> str:
    """Return ``name`` if it is a registered scheme, else raise with a "did you mean" hint."""
    return check_choice(name, list(NORMALIZERS), "normalisation")


def default_scheme(channel_name: str) -> str:
    """``ct`` for a channel named CT (any case), ``zscore`` for everything else (nnU-Net's rule)."""
    return "ct" if channel_name.strip().lower() == "ct" else "zscore"


def normalize(image: np.ndarray, mask: np.ndarray | None, norms: tuple[ChannelNorm, ...]) -> np.ndarray:
    """Normalise every channel.

    Args:
        image: ``[C, Z, Y, X]``.
        mask: ``[Z, Y, X]`` boolean non-zero mask (used by schemes with ``use_mask``), or None.
        norms: One :class:`ChannelNorm` per channel.

    Returns:
        float32 ``[C, Z, Y, X]``.
    """
    if len(norms) != image.shape[0]:
        raise ValueError(f"{len(norms)} normalisation(s) for {image.shape[0]} channel(s)")
    return np.stack([NORMALIZERS[n.scheme](image[i], mask, n) for i, n in enumerate(norms)])


def parse_norm_override(text: str | None, n_channels: int) -> dict[int, str]:
    """``"segvol"`` (every channel) or ``"0:ct,1:zscore"`` → {channel: scheme}."""
    if not text:
        return {}
    out: dict[int, str] = {}
    for part in text.split(","):
        part = part.strip()
        if ":" in part:
            ch, scheme = part.split(":", 1)
            if not ch.strip().isdigit() or int(ch) >= n_channels:
                raise UserError(f"--norm: channel {ch.strip()!r} does not exist (the dataset has {n_channels})")
            out[int(ch)] = check_scheme(scheme.strip())
        else:
            scheme = check_scheme(part)
            out.update({i: scheme for i in range(n_channels)})
    return out
