"""The window engine under both inference modes: Gaussian-weighted windows, prompts carried into each window.

The windows are MONAI's sliding-window lattice (``dense_patch_slices`` with the interval ``int(roi · (1 −
overlap))``, the last window flush with the end) and MONAI's Gaussian importance map, so a target predicted
over every window equals MONAI's ``sliding_window_inference`` (tested). Two things MONAI's inferer cannot do
are why this engine exists:

* each target may use only some windows (zoom-out-zoom-in: the windows that touch its region of interest),
  while a window that several targets need is encoded once and decoded for all of them;
* accumulators are per target and only as large as the box its windows cover.

Prompts are in volume voxels (z, y, x); each window gets them shifted into its own coordinates. A box that
misses a window, or a point-only prompt with no positive point inside it, predicts "absent" there
(:data:`ABSENT_LOGIT`); points outside a window are dropped from it. Mirroring test-time augmentation runs per
window (as nnU-Net does): the window and its prompts are flipped, predicted, flipped back and averaged.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from torch import Tensor, nn

from segvolpipe.models.prompt_encoder import Prompts
from segvolpipe.models.spec import LEFT_RIGHT_AXIS

ABSENT_LOGIT = -30.0
Box = tuple[int, int, int, int, int, int]
Point = tuple[float, float, float, int]  # z, y, x, label (1 positive, 0 negative)


@dataclass(frozen=True)
class TargetPrompt:
    """One target: a vocabulary index (−1: none), a box (z0, y0, x0, z1, y1, x1, inclusive) and points, in
    volume voxels."""

    text: int = -1
    box: Box | None = None
    points: tuple[Point, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.text < 0 and self.box is None and not any(p[3] == 1 for p in self.points):
            raise ValueError("a target needs a text, a box or a positive point")

    def scaled(self, factors: Sequence[float]) -> TargetPrompt:
        """The same target on a grid resized by ``factors`` per axis (voxel centres aligned, edges aligned)."""
        def at(c: float, a: int) -> float:
            return (c + 0.5) * factors[a] - 0.5

        box = None
        if self.box is not None:
            lo = [int(round(at(self.box[a], a))) for a in range(3)]
            hi = [max(lo[a], int(round(at(self.box[a + 3], a)))) for a in range(3)]
            box = (*lo, *hi)
        points = tuple((at(p[0], 0), at(p[1], 1), at(p[2], 2), p[3]) for p in self.points)
        return TargetPrompt(self.text, box, points)  # type: ignore[arg-type]

    def shifted(self, origin: Sequence[int]) -> TargetPrompt:
        """The same target in the coordinates of a window starting at ``origin``."""
        box = None if self.box is None else tuple(self.box[a] - origin[a % 3] for a in range(6))
        points = tuple((p[0] - origin[0], p[1] - origin[1], p[2] - origin[2], p[3]) for p in self.points)
        return TargetPrompt(self.text, box, points)  # type: ignore[arg-type]

    def mirrored(self, axes: Sequence[int], size: Sequence[int],
                 text_mirror: Sequence[int] | None = None) -> TargetPrompt:
        """The target of a volume of ``size`` flipped along ``axes``; flipped across the body (axis 2), a text names
        the structure's partner on the other side (``text_mirror``, from ``ModelSpec.vocabulary_mirror``)."""
        if not axes:
            return self
        text = self.text
        if LEFT_RIGHT_AXIS in axes and text_mirror is not None and text >= 0:
            text = int(text_mirror[text])
        box = None
        if self.box is not None:
            lo, hi = list(self.box[:3]), list(self.box[3:])
            for a in axes:
                lo[a], hi[a] = size[a] - 1 - hi[a], size[a] - 1 - lo[a]
            box = (*lo, *hi)
        points = []
        for p in self.points:
            c = list(p[:3])
            for a in axes:
                c[a] = size[a] - 1 - c[a]
            points.append((*c, p[3]))
        return TargetPrompt(text, box, tuple(points))  # type: ignore[arg-type]


def scan_interval(shape: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[int, ...]:
    """MONAI's interval between window origins: ``int(roi · (1 − overlap))`` (at least 1; the roi when it fits
    exactly)."""
    return tuple(r if r == n else max(1, int(r * (1 - overlap))) for n, r in zip(shape, roi, strict=True))


def lattice(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[int, int, int]]:
    """Window origins over a volume at least as large as ``roi`` on every axis (MONAI's order)."""
    if any(n < r for n, r in zip(shape, roi, strict=True)):
        raise ValueError(f"volume {tuple(shape)} is smaller than the window {tuple(roi)}: pad it first")
    slices = dense_patch_slices(list(shape), list(roi), scan_interval(shape, roi, overlap))
    return [tuple(s.start for s in sl) for sl in slices]  # type: ignore[misc]


def gaussian_weights(roi: Sequence[int], sigma_scale: float = 0.125) -> Tensor:
    """MONAI's Gaussian importance map of one window (float32, its minimum clamped above zero)."""
    return compute_importance_map(tuple(roi), mode="gaussian", sigma_scale=sigma_scale, dtype=torch.float32)


def pad_to(image: Tensor, size: Sequence[int]) -> tuple[Tensor, list[int]]:
    """Pad ``[C, Z, Y, X]`` at the end of each axis to at least ``size`` (with its minimum); returns the
    original spatial shape."""
    shape = list(image.shape[1:])
    pad = [max(0, s - n) for s, n in zip(size, shape, strict=True)]
    if any(pad):
        image = F.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]), value=float(image.min()))
    return image, shape


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the identity first): 2^len(axes) flips."""
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(sorted(axes), n)]


def window_prompts(targets: Sequence[TargetPrompt], origin: Sequence[int], roi: Sequence[int], modality: int,
                   point_tokens: int, device: torch.device) -> tuple[Prompts, Tensor]:
    """Prompts of one window (batch of one) and a ``[P]`` mask of targets that are absent from it."""
    p = len(targets)
    text = torch.tensor([[t.text for t in targets]], device=device)
    misses = torch.zeros(p, dtype=torch.bool)
    hi = [r - 1 for r in roi]
    boxes = box_mask = points = labels = None
    if any(t.box is not None for t in targets):
        rows, mask = [], []
        for i, t in enumerate(targets):
            if t.box is None:
                rows.append([0.0] * 6)
                mask.append(False)
                continue
            lo_w = [t.box[a] - origin[a] for a in range(3)]
            hi_w = [t.box[a + 3] - origin[a] for a in range(3)]
            misses[i] = any(h < 0 for h in hi_w) or any(lo > m for lo, m in zip(lo_w, hi, strict=True))
            rows.append([float(min(max(v, 0), m)) for v, m in zip(lo_w + hi_w, hi + hi, strict=True)])
            mask.append(True)
        boxes = torch.tensor([rows], dtype=torch.float32, device=device)
        box_mask = torch.tensor([mask], device=device)
    if any(t.points for t in targets):
        coords = torch.zeros(1, p, point_tokens, 3)
        labels = torch.full((1, p, point_tokens), -1, dtype=torch.long)
        for i, t in enumerate(targets):
            inside = [q for q in t.points
                      if all(0 <= q[a] - origin[a] <= hi[a] for a in range(3))][:point_tokens]
            for j, q in enumerate(inside):
                coords[0, i, j] = torch.tensor([q[a] - origin[a] for a in range(3)])
                labels[0, i, j] = int(q[3])
            if t.text < 0 and t.box is None and not any(q[3] == 1 for q in inside):
                misses[i] = True
        points, labels = coords.to(device), labels.to(device)
    prompts = Prompts(text=text, points=points, point_labels=labels, boxes=boxes, box_mask=box_mask,
                      modality=torch.tensor([modality], device=device))
    return prompts, misses


def predict_window(model: nn.Module, window: Tensor, targets: Sequence[TargetPrompt], origin: Sequence[int],
                   modality: int, device: torch.device, bf16: bool = False,
                   mirror_axes: Sequence[int] = ()) -> Tensor:
    """Logits ``[P, z, y, x]`` (float32, on ``device``) of one window ``[C, z, y, x]`` for ``P`` targets, averaged
    over the mirrorings of ``mirror_axes`` (0, 1, 2 = z, y, x)."""
    roi = list(window.shape[1:])
    tokens = getattr(getattr(model, "spec", None), "point_tokens", 20)
    window = window.to(device)
    spec = getattr(model, "spec", None)
    text_mirror = spec.vocabulary_mirror() if spec is not None else None
    local = [t.shifted(origin) for t in targets]
    combos = mirror_combinations(mirror_axes)
    total, misses = None, None
    for flip in combos:
        prompts, misses = window_prompts([t.mirrored(flip, roi, text_mirror) for t in local], (0, 0, 0), roi,
                                         modality, tokens, device)
        x = window.flip([d + 1 for d in flip]) if flip else window
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x[None], prompts)[0].float()
        if flip:
            logits = logits.flip([d + 1 for d in flip])
        total = logits if total is None else total + logits
    assert total is not None and misses is not None
    out = total / len(combos)
    return out.masked_fill(misses.to(device).reshape(-1, 1, 1, 1), ABSENT_LOGIT)


@dataclass
class Accumulator:
    """Weighted sum and weight of one group of targets over the box its windows cover."""

    lo: tuple[int, int, int]
    total: Tensor  # [P_group, z, y, x]
    weight: Tensor  # [z, y, x]

    def result(self) -> Tensor:
        """The blended logits (in place: the accumulator is spent)."""
        return self.total.div_(self.weight.clamp_min(1e-12))


def run_windows(model: nn.Module, image: Tensor, targets: Sequence[TargetPrompt], origins: Sequence[Sequence[int]],
                members: Sequence[Sequence[int]], roi: Sequence[int], device: torch.device | str = "cpu",
                modality: int = 0, bf16: bool = False, mirror_axes: Sequence[int] = (), sigma_scale: float = 0.125,
                on_window=None) -> dict[int, tuple[tuple[int, int, int], Tensor]]:
    """Predict the targets over a set of windows and blend them with Gaussian weights.

    Args:
        image: ``[C, Z, Y, X]``, at least ``roi`` on every axis.
        targets: Prompts in volume voxels.
        origins: Window origins (from :func:`lattice`).
        members: For each window, the indices of the targets it is decoded for (encoded once for all of them).
        on_window: Called once per window (progress).

    Returns:
        For each target that has at least one window: ``(lo, logits)`` where ``logits`` (float32, CPU) covers the
        box ``lo … lo + logits.shape`` spanned by its windows.
    """
    device = torch.device(device)
    weight = gaussian_weights(roi, sigma_scale)
    target_windows: dict[int, list[int]] = {}
    for w, m in enumerate(members):
        for t in m:
            target_windows.setdefault(t, []).append(w)
    groups: dict[frozenset[int], list[int]] = {}
    for t, ws in target_windows.items():
        groups.setdefault(frozenset(ws), []).append(t)
    accs: dict[int, tuple[Accumulator, int]] = {}
    group_accs: list[tuple[Accumulator, list[int]]] = []
    for ws, ts in groups.items():
        starts = [origins[w] for w in ws]
        lo = tuple(min(o[a] for o in starts) for a in range(3))
        hi = tuple(max(o[a] for o in starts) + roi[a] for a in range(3))
        size = [h - low for h, low in zip(hi, lo, strict=True)]
        acc = Accumulator(lo, torch.zeros(len(ts), *size), torch.zeros(size))  # type: ignore[arg-type]
        for w in ws:
            sl = tuple(slice(origins[w][a] - lo[a], origins[w][a] - lo[a] + roi[a]) for a in range(3))
            acc.weight[sl] += weight
        for k, t in enumerate(ts):
            accs[t] = (acc, k)
        group_accs.append((acc, ts))
    for w, origin in enumerate(origins):
        wanted = list(members[w])
        if not wanted:
            continue
        sl = tuple(slice(origin[a], origin[a] + roi[a]) for a in range(3))
        logits = predict_window(model, image[(slice(None), *sl)], [targets[t] for t in wanted], origin, modality,
                                device, bf16, mirror_axes)
        weighted = (logits * weight.to(logits.device)).cpu()
        for j, t in enumerate(wanted):
            acc, k = accs[t]
            local = tuple(slice(origin[a] - acc.lo[a], origin[a] - acc.lo[a] + roi[a]) for a in range(3))
            acc.total[(k, *local)] += weighted[j]
        if on_window is not None:
            on_window()
    out: dict[int, tuple[tuple[int, int, int], Tensor]] = {}
    for acc, ts in group_accs:
        blended = acc.result()
        for k, t in enumerate(ts):
            out[t] = (acc.lo, blended[k])
    return out
