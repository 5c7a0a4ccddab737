"""SegVol's zoom-out-zoom-in inference on the window engine.

1. Zoom out: the foreground box of the volume (voxels of the first channel above its mean — the body in CT,
   as SegVol's foreground crop; the whole volume when that box is empty) resized to the model input
   (trilinear), prompts scaled with it; one forward for every target; the logits resized back to the box,
   "absent" outside it.
2. Region of interest per target: the box of coarse probability > ``threshold``, united with the user's box
   (and positive points) when given, grown by ``margin`` of its size on each side and to at least one window.
3. Zoom in: the windows of the full-resolution sliding-window lattice that touch the region, each encoded once
   for every target whose region it touches; inside the region the blended logits replace the coarse ones.
   Because every lattice window that contains a voxel of the region is used, the logits inside the region
   equal those of the ``sliding`` mode exactly (tested) — zoom only decides where to look.
4. A target the coarse pass does not find (and that has no box or positive point) keeps its coarse logits.

SegVol runs its zoom-in on a window grid of its own inside the region; sharing the whole-volume lattice is what
makes the region's result identical to sliding window and lets targets with overlapping regions share encodings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segvolpipe.inference.windows import (
    ABSENT_LOGIT,
    TargetPrompt,
    lattice,
    pad_to,
    predict_window,
    run_windows,
)


@dataclass(frozen=True)
class ZoomInfo:
    """What zoom-out-zoom-in did for one target."""

    found: bool  # the coarse pass found it (or a box/point located it)
    roi: tuple[tuple[int, int], ...] | None  # (lo, hi) per axis on the volume grid
    windows: int  # fine windows that decoded this target


def _resize(volume: Tensor, size: Sequence[int]) -> Tensor:
    """``[C, Z, Y, X]`` → ``[C, *size]``, trilinear, edges aligned."""
    return F.interpolate(volume[None].float(), size=tuple(size), mode="trilinear", align_corners=False)[0]


def _box_of(mask: Tensor) -> list[tuple[int, int]] | None:
    if not bool(mask.any()):
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = torch.nonzero(mask.any(dim=other[1]).any(dim=other[0]))[:, 0]
        box.append((int(idx.min()), int(idx.max()) + 1))
    return box


def _union(a: list[tuple[int, int]] | None, b: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    if a is None or b is None:
        return a or b
    return [(min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b, strict=True)]


def foreground_box(image: Tensor, margin: int = 2) -> list[tuple[int, int]]:
    """Box of the voxels of channel 0 above its mean, grown by ``margin`` voxels (the whole volume if none)."""
    channel = image[0]
    box = _box_of(channel > channel.mean())
    if box is None:
        return [(0, n) for n in channel.shape]
    return [(max(0, lo - margin), min(n, hi + margin)) for (lo, hi), n in zip(box, channel.shape, strict=True)]


def region_of_interest(box: list[tuple[int, int]], shape: Sequence[int], roi: Sequence[int],
                       margin: float) -> tuple[tuple[int, int], ...]:
    """``box`` grown by ``margin`` of its size per side, then to at least one window, kept inside the volume."""
    out = []
    for (lo, hi), n, r in zip(box, shape, roi, strict=True):
        grow = math.ceil(margin * (hi - lo))
        lo, hi = max(0, lo - grow), min(n, hi + grow)
        if hi - lo < r:
            centre = (lo + hi) / 2
            lo = int(max(0, min(n - r, round(centre - r / 2))))
            hi = min(n, lo + r)
        out.append((lo, hi))
    return tuple(out)


def _prompt_box(target: TargetPrompt, shape: Sequence[int]) -> list[tuple[int, int]] | None:
    """The user's box and positive points as a box on the volume grid."""
    box = None
    if target.box is not None:
        box = [(max(0, target.box[a]), min(shape[a], target.box[a + 3] + 1)) for a in range(3)]
    positives = [p for p in target.points if p[3] == 1]
    if positives:
        pts = [(max(0, int(min(p[a] for p in positives))), min(shape[a], int(max(p[a] for p in positives)) + 1))
               for a in range(3)]
        box = _union(box, pts)
    return box


@torch.no_grad()
def zoom_out_zoom_in(model: nn.Module, image: Tensor, targets: Sequence[TargetPrompt], overlap: float = 0.5,
                     device: torch.device | str = "cpu", modality: int = 0, bf16: bool = False,
                     mirror_axes: Sequence[int] = (), sigma_scale: float = 0.125, threshold: float = 0.5,
                     margin: float = 0.1, zoom_out_size: Sequence[int] | None = None,
                     on_window: Callable[[], None] | None = None) -> Iterator[tuple[int, Tensor, ZoomInfo]]:
    """Yield ``(target index, logits [Z, Y, X] float32 CPU, info)`` for each target, one at a time.

    Args:
        image: ``[C, Z, Y, X]`` on the model's preprocessed grid.
        targets: Prompts in volume voxels.
        threshold: Probability that marks the coarse mask.
        margin: Fraction of the coarse box added on each side before the zoom-in.
        zoom_out_size: The zoom-out view (the model input; a model accepts nothing else).
    """
    device = torch.device(device)
    roi = list(model.input_size)
    zoom = list(zoom_out_size or roi)
    shape = list(image.shape[1:])
    fg = foreground_box(image)
    fg_lo = [lo for lo, _ in fg]
    fg_shape = [hi - lo for lo, hi in fg]
    view = image[(slice(None), *(slice(lo, hi) for lo, hi in fg))]
    factors = [z / n for z, n in zip(zoom, fg_shape, strict=True)]
    coarse_targets = [t.shifted(fg_lo).scaled(factors) for t in targets]
    coarse = predict_window(model, _resize(view, zoom), coarse_targets, (0, 0, 0), modality, device, bf16,
                            mirror_axes).cpu()
    if on_window is not None:
        on_window()
    logit_threshold = math.log(threshold / (1 - threshold))

    def upsampled(t: int) -> Tensor:
        out = torch.full(shape, ABSENT_LOGIT)
        out[tuple(slice(lo, hi) for lo, hi in fg)] = _resize(coarse[t : t + 1], fg_shape)[0]
        return out

    padded, _ = pad_to(image.float(), roi)
    origins = lattice(padded.shape[1:], roi, overlap)
    rois: dict[int, tuple[tuple[int, int], ...]] = {}
    for t, target in enumerate(targets):
        box = _union(_box_of(upsampled(t) > logit_threshold), _prompt_box(target, shape))
        if box is not None:
            rois[t] = region_of_interest(box, padded.shape[1:], roi, margin)
    members: list[list[int]] = [[] for _ in origins]
    for t, region in rois.items():
        for w, o in enumerate(origins):
            if all(o[a] < region[a][1] and o[a] + roi[a] > region[a][0] for a in range(3)):
                members[w].append(t)
    used = [w for w, m in enumerate(members) if m]
    fine = run_windows(model, padded, targets, [origins[w] for w in used], [members[w] for w in used], roi, device,
                       modality, bf16, mirror_axes, sigma_scale, on_window)
    for t in range(len(targets)):
        logits = upsampled(t)
        if t not in rois:
            yield t, logits, ZoomInfo(False, None, 0)
            continue
        lo, block = fine.pop(t)
        region = rois[t]
        src = tuple(slice(region[a][0] - lo[a], min(region[a][1], shape[a]) - lo[a]) for a in range(3))
        dst = tuple(slice(region[a][0], min(region[a][1], shape[a])) for a in range(3))
        logits[dst] = block[src]
        yield t, logits, ZoomInfo(True, tuple((a, min(b, n)) for (a, b), n in zip(region, shape, strict=True)),
                                  sum(1 for m in members if t in m))

