"""Training prompts for the promptable models, sampled from a crop's labels (and its pseudo-masks).

SegVol trains each class of a crop under one of six prompt combinations (points+text, box+text, text, box,
points, box+points) and adds pseudo-mask regions as extra point/box prompts with loss weight 0.1. Here every
sample gets ``max_prompts`` rows: its present classes (random order), then a few absent classes as text-only
prompts with an empty target ("not here"), then pseudo regions, then padding rows of weight 0.

All randomness comes from one CPU :class:`torch.Generator`; sampling runs on a CPU copy of the labels (per
prompted region: one comparison, a bounding box from its projections, points by rejection sampling in the box)
and only the small prompt tensors are moved to the label's device. On CPU the targets reuse those masks; on
another device they are built there by one broadcast comparison (:func:`region_targets`).

Training draws the prompts where the batch is built, in the loader's workers (:class:`PromptSampler`): on a GPU
the per-region passes over a 32×256×256 crop cost more than the model's step, and the training process would
otherwise spend its time on them while the workers' cores sit idle. The batch then carries the small prompt
tensors and each row's class; the trainer builds the targets on its device with :func:`region_targets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from segvolpipe.errors import did_you_mean
from segvolpipe.models.prompt_encoder import Prompts

COMBOS = ("points+text", "box+text", "text", "box", "points", "box+points")
PSEUDO_COMBOS = ("points", "box", "box+points")
NEGATIVE_MARGIN = 10  # negatives are drawn from the target's bounding box grown by this many voxels


@dataclass(frozen=True)
class PromptOptions:
    """How :func:`sample_prompts` draws prompts.

    Attributes:
        max_prompts: ``P`` rows per sample: class prompts, then pseudo prompts, then padding (weight 0).
        box_jitter: Each box corner moves by an integer uniform in ``[-j, j]`` voxels (clipped to the volume).
        max_positive_points: A points prompt has 1..this many positives drawn from the target.
        max_negative_points: ... and 0..this many negatives from outside it (inside the target's bounding box
            grown by 10 voxels when there is room, else anywhere).
        pseudo_prompts: At most this many pseudo-region prompts per sample (points, box or box+points).
        pseudo_weight: Loss weight of a pseudo prompt.
        absent_text_prompts: At most this many text-only prompts of classes absent from the crop, empty target.
        min_region_voxels: Pseudo regions smaller than this (in the crop) are not prompted.
        combos: The combinations class prompts are drawn from; pseudo prompts use the text-free ones.
        text: False: combinations with text are never drawn (a model without semantic prompts).
        text_only_share: Probability that a class prompt is text alone (when ``text`` is among the combinations
            and others are too); the others are drawn uniformly. Text alone is what a user without a box types and
            what the rotation test uses; drawn as one combination in six, a model that has learnt to read boxes
            takes "no box, no point" for "empty" (the absent-class prompts are text alone with empty targets): on
            Dataset900 text-only val Dice fell from 0.14 to 0.09 while box+text rose to 0.41.
    """

    max_prompts: int
    box_jitter: int = 5
    max_positive_points: int = 10
    max_negative_points: int = 10
    pseudo_prompts: int = 2
    pseudo_weight: float = 0.1
    absent_text_prompts: int = 1
    min_region_voxels: int = 20
    combos: tuple[str, ...] = COMBOS
    text: bool = True
    text_only_share: float = 0.4

    def __post_init__(self) -> None:
        for combo in self.combos:
            if combo not in COMBOS:
                hint = did_you_mean(combo, COMBOS) or f"; choose from {', '.join(COMBOS)}"
                raise ValueError(f"unknown prompt combination {combo!r}{hint}")
        if not self.allowed:
            raise ValueError(f"no prompt combination left from {self.combos} with text={self.text}")
        for name in ("max_prompts", "max_positive_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("box_jitter", "max_negative_points", "pseudo_prompts", "absent_text_prompts",
                     "min_region_voxels"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.pseudo_weight < 0:
            raise ValueError(f"pseudo_weight must not be negative, got {self.pseudo_weight}")
        if not 0 <= self.text_only_share <= 1:
            raise ValueError(f"text_only_share must be in [0, 1], got {self.text_only_share}")

    def draw_combo(self, generator: torch.Generator) -> str:
        """A class prompt's combination: text alone with probability ``text_only_share``, else uniform among the
        others (uniform among all when text alone is not allowed or is the only one)."""
        allowed = self.allowed
        others = [c for c in allowed if c != "text"]
        if "text" not in allowed or not others:
            return allowed[_randint(generator, 0, len(allowed) - 1)]
        if float(torch.rand(1, generator=generator)) < self.text_only_share:
            return "text"
        return others[_randint(generator, 0, len(others) - 1)]

    @property
    def allowed(self) -> tuple[str, ...]:
        """The combinations class prompts draw from: ``combos`` (deduplicated) less those with text if not ``text``."""
        return tuple(dict.fromkeys(c for c in self.combos if self.text or "text" not in c))

    @property
    def num_points(self) -> int:
        """``N``, the point slots of every prompt (positives, negatives, then −1 padding)."""
        return self.max_positive_points + self.max_negative_points

    @property
    def pseudo_combos(self) -> tuple[str, ...]:
        """The allowed text-free combinations with a point or a box (pseudo prompts draw from these)."""
        return tuple(c for c in self.allowed if c in PSEUDO_COMBOS)


@dataclass
class PromptBatch:
    """Prompts and their targets for a batch of crops.

    Attributes:
        prompts: The model's prompts (``points [B, P, N, 3]``, ``boxes [B, P, 6]`` always present).
        targets: ``[B, P, Z, Y, X]`` float 0/1 (``[B, P, 0, 0, 0]`` when drawn with ``targets=False``).
        weights: ``[B, P]`` float: 1 class prompts, ``pseudo_weight`` pseudo prompts, 0 padding.
        classes: ``[B, P]`` long: label value of a class prompt, −(region id) of a pseudo prompt, 0 padding.
        combos: Per sample, per prompt: the combination used ("" for padding).
    """

    prompts: Prompts
    targets: Tensor
    weights: Tensor
    classes: Tensor
    combos: list[list[str]]


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer uniform in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _choose(generator: torch.Generator, n: int, k: int) -> list[int]:
    """``min(n, k)`` distinct indices of ``range(n)`` in random order."""
    return torch.randperm(n, generator=generator)[:k].tolist()


def _bounds(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive bounding box ``(lo [3], hi [3])`` of a non-empty ``mask`` ``[Z, Y, X]`` (from projections)."""
    zy = mask.any(2)  # boolean reductions: a third of the time of sums, which widen to int64 first
    axes = [torch.nonzero(a)[:, 0] for a in (zy.any(1), zy.any(0), mask.any(0).any(0))]
    return torch.stack([a[0] for a in axes]), torch.stack([a[-1] for a in axes])


def _draw(mask: Tensor, want: bool, lo: Tensor, hi: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` voxels (with replacement) where ``mask == want`` inside the box ``lo..hi`` → float ``[k, 3]``.

    Rejection sampling from uniform candidates in the box (no pass over the volume); where too few of them hit,
    the box's voxels are listed with ``nonzero`` instead. Empty ``[0, 3]`` if the box has no such voxel.
    """
    cand = lo + (torch.rand(8 * k + 8, 3, generator=generator) * (hi - lo + 1)).long()
    hits = cand[mask[cand[:, 0], cand[:, 1], cand[:, 2]] == want]
    if hits.shape[0] >= k:
        return hits[:k].float()
    (z0, y0, x0), (z1, y1, x1) = lo.tolist(), (hi + 1).tolist()
    coords = torch.nonzero(mask[z0:z1, y0:y1, x0:x1] == want)
    if not coords.shape[0]:
        return coords.float()
    return (coords[torch.randint(coords.shape[0], (k,), generator=generator)] + lo).float()


def _region_prompt(mask: Tensor, lo: Tensor, hi: Tensor, combo: str, options: PromptOptions,
                   generator: torch.Generator, points: Tensor, labels: Tensor, box: Tensor) -> bool:
    """Fill one row's ``points [N, 3]``, ``labels [N]`` and ``box [6]`` (CPU views) for a non-empty ``mask``
    ``[Z, Y, X]`` with bounding box ``lo..hi`` under ``combo``; returns whether the row has a box."""
    limit = torch.tensor(mask.shape) - 1
    has_box = "box" in combo
    if has_box:
        j = options.box_jitter
        corners = (torch.cat([lo, hi]) + torch.randint(-j, j + 1, (6,), generator=generator)).reshape(2, 3)
        corners = torch.minimum(corners.clamp(min=0), limit)
        box[:3], box[3:] = corners.amin(0).float(), corners.amax(0).float()
    if "points" in combo:
        n_pos = _randint(generator, 1, options.max_positive_points)
        n_neg = _randint(generator, 0, options.max_negative_points)
        points[:n_pos] = _draw(mask, True, lo, hi, n_pos, generator)
        labels[:n_pos] = 1
        if n_neg:
            grown_lo, grown_hi = (lo - NEGATIVE_MARGIN).clamp(min=0), torch.minimum(hi + NEGATIVE_MARGIN, limit)
            neg = _draw(mask, False, grown_lo, grown_hi, n_neg, generator)
            if not neg.shape[0]:
                neg = _draw(mask, False, torch.zeros_like(lo), limit, n_neg, generator)
            points[n_pos : n_pos + neg.shape[0]] = neg
            labels[n_pos : n_pos + neg.shape[0]] = 0
    return has_box


class _Rows:
    """The CPU prompt tensors of a batch, filled row by row (unfilled rows stay padding)."""

    def __init__(self, b: int, p: int, n: int) -> None:
        self.text = torch.full((b, p), -1, dtype=torch.long)
        self.points = torch.zeros(b, p, n, 3)
        self.point_labels = torch.full((b, p, n), -1, dtype=torch.long)
        self.boxes = torch.zeros(b, p, 6)
        self.box_mask = torch.zeros(b, p, dtype=torch.bool)
        self.weights = torch.zeros(b, p)
        self.classes = torch.zeros(b, p, dtype=torch.long)
        self.combos: list[list[str]] = [[""] * p for _ in range(b)]
        self.used = [0] * b
        self.masks: dict[tuple[int, int], tuple[Tensor, list[int], list[int]]] = {}

    def free(self, i: int) -> int:
        """Rows of sample ``i`` still unfilled."""
        return self.text.shape[1] - self.used[i]

    def add(self, i: int, cls: int, combo: str, weight: float, text: int, mask: Tensor | None,
            options: PromptOptions, generator: torch.Generator) -> None:
        """Fill the next row of sample ``i``: ``text`` is used if ``combo`` has text, ``mask`` ``[Z, Y, X]``
        (non-empty) gives the points and box if it has those."""
        row = self.used[i]
        if "text" in combo:
            self.text[i, row] = text
        if mask is not None:
            lo, hi = _bounds(mask)
            self.masks[i, row] = mask, lo.tolist(), (hi + 1).tolist()
            if "box" in combo or "points" in combo:
                self.box_mask[i, row] = _region_prompt(mask, lo, hi, combo, options, generator, self.points[i, row],
                                                       self.point_labels[i, row], self.boxes[i, row])
        self.weights[i, row], self.classes[i, row], self.combos[i][row] = weight, cls, combo
        self.used[i] = row + 1

    def targets(self, size: torch.Size) -> Tensor:
        """Float targets ``[B, P, *size]`` from the rows' masks (rows without one: empty)."""
        out = torch.zeros(*self.text.shape, *size)
        for (i, row), (mask, (z0, y0, x0), (z1, y1, x1)) in self.masks.items():
            out[i, row, z0:z1, y0:y1, x0:x1] = mask[z0:z1, y0:y1, x0:x1]
        return out


def region_targets(label: Tensor, pseudo: Tensor | None, classes: Tensor) -> Tensor:
    """Targets from ``classes`` ``[B, P]`` (as in :class:`PromptBatch`) on the label's device, vectorised.

    Args:
        label: ``[B, Z, Y, X]`` class map.
        pseudo: ``[B, Z, Y, X]`` pseudo-masks or None.
        classes: ``[B, P]`` long: label value (> 0), −(pseudo id) (< 0) or 0 (padding).

    Returns:
        ``[B, P, Z, Y, X]`` float: ``label == v`` for class rows, ``pseudo == id`` for pseudo rows, else 0.
    """
    never = torch.iinfo(torch.long).min
    view = classes.to(label.device).reshape(*classes.shape, 1, 1, 1)
    out = torch.eq(label.unsqueeze(1), torch.where(view > 0, view, never))
    if pseudo is not None:
        out.logical_or_(torch.eq(pseudo.unsqueeze(1), torch.where(view < 0, -view, never)))
    return out.float()


def sample_prompts(label: Tensor, pseudo: Tensor | None, text_index: Sequence[int], options: PromptOptions,
                   generator: torch.Generator, modality: Tensor | None = None, targets: bool = True) -> PromptBatch:
    """Draw ``P = options.max_prompts`` prompts per crop with their targets and loss weights.

    Args:
        label: ``[B, Z, Y, X]`` integer class map, values 0..K (K = ``len(text_index)``).
        pseudo: ``[B, Z, Y, X]`` integer pseudo-masks (0 none, −1 ignore, 1..K classes, ids > K regions) or None.
        text_index: Vocabulary index of each label value 1..K (value ``v`` ↦ ``text_index[v - 1]``).
        options: What to draw.
        generator: CPU generator; the only source of randomness (same state → same batch).
        modality: ``[B]`` long (0 CT, 1 MRI) passed through to :attr:`Prompts.modality`, or None.
        targets: Build the targets; False leaves :attr:`PromptBatch.targets` empty (``[B, P, 0, 0, 0]``), for a
            caller that builds them elsewhere from :attr:`PromptBatch.classes` (:func:`region_targets`).

    Returns:
        A :class:`PromptBatch` on ``label.device``.
    """
    if label.dim() != 4:
        raise ValueError(f"label must be [B, Z, Y, X], got {tuple(label.shape)}")
    if pseudo is not None and pseudo.shape != label.shape:
        raise ValueError(f"pseudo {tuple(pseudo.shape)} must have the label's shape {tuple(label.shape)}")
    if generator.device.type != "cpu":
        raise ValueError(f"the generator must be a CPU generator, got one on {generator.device}")
    device, k = label.device, len(text_index)
    b, p, n = label.shape[0], options.max_prompts, options.num_points
    for name, t in (("label", label), ("pseudo", pseudo)):
        if t is not None and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
            raise ValueError(f"{name} must be an integer map, got {t.dtype}")
    lab = label.detach().to("cpu")  # any integer type (the loader's are int16 / int32): no widened copy
    pse = None if pseudo is None else pseudo.detach().to("cpu")
    if lab.numel() and int(lab.max()) > k:
        raise ValueError(f"label value {int(lab.max())} but only {k} text indices")

    rows = _Rows(b, p, n)
    allowed, pseudo_allowed = options.allowed, options.pseudo_combos
    for i in range(b):
        counts = torch.bincount(lab[i].flatten().clamp(min=0), minlength=k + 1).tolist()
        present = [v for v in range(1, k + 1) if counts[v] > 0]
        absent = [v for v in range(1, k + 1) if counts[v] == 0]
        for v in (present[j] for j in _choose(generator, len(present), p)):
            combo = options.draw_combo(generator)
            rows.add(i, v, combo, 1.0, int(text_index[v - 1]), lab[i] == v, options, generator)
        if "text" in allowed:
            for j in _choose(generator, len(absent), min(options.absent_text_prompts, rows.free(i))):
                rows.add(i, absent[j], "text", 1.0, int(text_index[absent[j] - 1]), None, options, generator)
        if pse is not None and pseudo_allowed and options.pseudo_prompts and rows.free(i):
            counts = torch.bincount(pse[i].flatten().clamp(min=0)).tolist()
            regions = [r for r in range(k + 1, len(counts)) if counts[r] >= max(1, options.min_region_voxels)]
            for j in _choose(generator, len(regions), min(options.pseudo_prompts, rows.free(i))):
                combo = pseudo_allowed[_randint(generator, 0, len(pseudo_allowed) - 1)]
                rows.add(i, -regions[j], combo, options.pseudo_weight, -1, pse[i] == regions[j], options, generator)

    cls = rows.classes.to(device)
    if not targets:
        masks = torch.zeros(*rows.classes.shape, 0, 0, 0, device=device)
    else:
        masks = rows.targets(label.shape[1:]) if device.type == "cpu" else region_targets(label, pseudo, cls)
    prompts = Prompts(
        text=rows.text.to(device), points=rows.points.to(device), point_labels=rows.point_labels.to(device),
        boxes=rows.boxes.to(device), box_mask=rows.box_mask.to(device),
        modality=None if modality is None else modality.to(device),
    )
    return PromptBatch(prompts, masks, rows.weights.to(device), cls, rows.combos)


@dataclass(frozen=True)
class PromptSampler:
    """Draws a training batch's prompts where the batch is built (the loader's workers).

    The generator of step ``step`` of ``epoch`` on ``rank`` is seeded from ``(seed, epoch, step, rank)``, so the
    prompts are the same whatever the number of workers, and a resumed run draws what the uninterrupted one drew.

    Attributes:
        options: What to draw.
        text_index: Vocabulary index of each label value 1..K of this data source.
        modality: 0 CT, 1 MRI (every sample of the source).
        seed: The run's seed.
    """

    options: PromptOptions
    text_index: tuple[int, ...]
    modality: int
    seed: int

    def generator(self, epoch: int, step: int, rank: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, epoch, step, rank, 7]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def __call__(self, label: Tensor, pseudo: Tensor | None, epoch: int, step: int, rank: int) -> dict:
        """The prompts of one batch (``label`` ``[B, Z, Y, X]``): ``prompts`` (the fields of :class:`Prompts`),
        ``weights`` ``[B, P]`` and ``classes`` ``[B, P]`` — every tensor on the CPU, the targets not built."""
        modality = torch.full((label.shape[0],), self.modality, dtype=torch.long)
        batch = sample_prompts(label, pseudo, self.text_index, self.options, self.generator(epoch, step, rank),
                               modality, targets=False)
        drawn = {f.name: getattr(batch.prompts, f.name) for f in fields(batch.prompts)}
        return {"prompts": {k: v for k, v in drawn.items() if v is not None}, "weights": batch.weights,
                "classes": batch.classes}
