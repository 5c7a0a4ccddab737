"""Evaluation figures: Dice violins, upright vs rotated bars, Dice against angle, overlay slices, variant table.

Every figure is drawn on matplotlib's Agg canvas without pyplot (no global backend switch, no state shared
between calls) and written atomically as PNG. NaN scores (class absent from both maps) are dropped; empty
inputs give a figure that says so instead of an exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segvolpipe.io.atomic import atomic_path

Scores = Mapping[str, Sequence[float]]  # class name -> Dice per case


def dice_violins(
    path: str | Path, scores: Scores | Mapping[str, Scores], title: str = "Dice per class"
) -> None:
    """Per-class Dice violins, one colour per variant.

    Args:
        path: PNG to write.
        scores: ``{class: [Dice per case]}`` or ``{variant: {class: [Dice per case]}}``. NaN values are
            dropped; a class with fewer than two values is drawn as points; each violin marks its median.
        title: Figure title.
    """
    variants = _by_variant(scores)
    classes = list(dict.fromkeys(c for per_class in variants.values() for c in per_class))
    fig, ax = _figure(max(4.0, 1.1 * len(classes) * max(1, len(variants)) ** 0.5 + 2), 4.2)
    width = 0.8 / max(1, len(variants))
    for k, (variant, per_class) in enumerate(variants.items()):
        colour = f"C{k % 10}"
        for i, name in enumerate(classes):
            values = _finite(per_class.get(name, ()))
            x = i - 0.4 + width * (k + 0.5)
            if len(values) >= 2 and np.ptp(values) > 0:
                parts = ax.violinplot([values], positions=[x], widths=width * 0.9, showextrema=False)
                for body in parts["bodies"]:
                    body.set(facecolor=colour, edgecolor=colour, alpha=0.45)
            if values:
                ax.scatter(np.full(len(values), x), values, s=9, color=colour, alpha=0.8, zorder=3)
                ax.hlines(
                    float(np.median(values)),
                    x - width * 0.35,
                    x + width * 0.35,
                    color="black",
                    lw=1.5,
                    zorder=4,
                )
            else:
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="gray")
        if len(variants) > 1 or variant:
            ax.scatter([], [], color=colour, label=variant or "Dice")
    _class_axis(ax, classes, "Dice")
    if len(variants) > 1:
        ax.legend(loc="lower left", fontsize=8)
    _finish(fig, ax, path, title, empty=not any(_finite(v) for pc in variants.values() for v in pc.values()))


def rotation_bars(
    path: str | Path,
    classes: Sequence[str],
    upright: Mapping[str, Sequence[float]],
    rotated: Mapping[str, Sequence[float]],
    title: str = "Dice upright vs rotated",
) -> None:
    """Mean Dice per class, upright (solid) beside rotated (hatched), grouped per variant (seed report fig. 7).

    Args:
        path: PNG to write.
        classes: Class names, in the order of the lists.
        upright, rotated: ``{variant: [mean Dice per class]}``; NaN draws no bar.
        title: Figure title.
    """
    variants = list(dict.fromkeys([*upright, *rotated]))
    fig, ax = _figure(max(5.0, 0.45 * len(classes) * max(1, 2 * len(variants)) + 2), 4.2)
    width = 0.8 / max(1, 2 * len(variants))
    for k, variant in enumerate(variants):
        colour = f"C{k % 10}"
        for j, (series, hatch, alpha) in enumerate(((upright, None, 0.9), (rotated, "//", 0.45))):
            values = _padded(series.get(variant, ()), len(classes))
            x = np.arange(len(classes)) - 0.4 + width * (2 * k + j + 0.5)
            kind = "upright" if j == 0 else "rotated"
            ax.bar(
                x,
                np.nan_to_num(values),
                width * 0.95,
                color=colour,
                alpha=alpha,
                hatch=hatch,
                edgecolor=colour,
                label=f"{variant} {kind}".strip(),
            )
            for xi, v in zip(x, values, strict=True):
                if math.isfinite(v):
                    ax.text(xi, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
    _class_axis(ax, list(classes), "mean Dice")
    ax.set_ylim(0, 1.12)
    if variants:
        ax.legend(loc="upper right", fontsize=7, ncol=max(1, len(variants)))
    _finish(fig, ax, path, title, empty=not classes or not variants)


def dice_vs_angle(
    path: str | Path,
    angles: Sequence[float],
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    title: str = "Dice against rotation angle",
) -> None:
    """Dice against the rotation angle (degrees about the longitudinal axis), one panel per variant.

    Args:
        path: PNG to write.
        angles: The sweep, in degrees.
        curves: ``{variant: {class or "mean": [Dice per angle]}}``; "mean" is drawn bold in black.
        title: Figure title.
    """
    n = max(1, len(curves))
    fig, axes = _figure(min(4.2 * n, 17.0), 3.8, ncols=n)
    axes = np.atleast_1d(axes)
    for ax, (variant, per_class) in zip(axes, curves.items(), strict=False):
        for k, (name, values) in enumerate(per_class.items()):
            y = _padded(values, len(angles))
            if name == "mean":
                ax.plot(angles, y, "o-", color="black", lw=2.5, ms=4, label="mean", zorder=3)
            else:
                ax.plot(angles, y, ".-", color=f"C{k % 10}", lw=1, alpha=0.8, label=name)
        ax.set(title=variant, xlabel="rotation about S (°)", ylabel="Dice", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if per_class:
            ax.legend(fontsize=7, loc="lower left")
    empty = not angles or not any(_finite(v) for pc in curves.values() for v in pc.values())
    _finish(fig, axes[0], path, title, empty=empty)


def overlay_slices(
    path: str | Path,
    image: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray,
    n: int = 3,
    spacing: Sequence[float] | None = None,
    title: str = "",
) -> None:
    """A few axial slices through the reference's foreground: reference (left) and prediction (right) overlays.

    Args:
        path: PNG to write.
        image: [Z, Y, X] or [C, Z, Y, X] on the canonical grid (first channel shown); axis 0 is axial.
        reference, prediction: int [Z, Y, X] label maps of the same grid.
        n: Slices (evenly spread over the reference's foreground, else over the prediction's, else the volume).
        spacing: Voxel size (z, y, x) in mm, for the pixel aspect.
        title: Figure title.

    Slices are shown radiologically: anterior up, patient's right on the left.
    """
    image = image[0] if image.ndim == 4 else image
    if image.shape != reference.shape or reference.shape != prediction.shape:
        raise ValueError(
            f"shapes differ: image {image.shape}, reference {reference.shape}, prediction {prediction.shape}"
        )
    rows = _slices(reference, prediction, n)
    fig, axes = _figure(7.0, 3.3 * max(1, len(rows)), nrows=max(1, len(rows)), ncols=2)
    axes = np.atleast_2d(axes)
    lo, hi = np.percentile(image, (1, 99)) if image.size else (0.0, 1.0)
    values = sorted(int(v) for v in np.union1d(np.unique(reference), np.unique(prediction)) if v != 0)
    cmap, norm = _label_colours(values)
    aspect = 1.0 if spacing is None else float(spacing[1]) / float(spacing[2])
    for r, z in enumerate(rows):
        for c, (label, name) in enumerate(((reference, "reference"), (prediction, "prediction"))):
            ax = axes[r, c]
            ax.imshow(
                _radiological(image[z]), cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest"
            )
            overlay = np.ma.masked_equal(_radiological(label[z]), 0)
            if values:
                ax.imshow(overlay, cmap=cmap, norm=norm, alpha=0.5, aspect=aspect, interpolation="nearest")
            outline = _radiological(reference[z] > 0)
            if c == 1 and outline.any() and not outline.all():  # the reference's outline over the prediction
                ax.contour(outline.astype(np.float32), levels=[0.5], colors="black", linewidths=0.8)
            ax.set_title(f"{name}, z = {z}" + (" (black: reference outline)" if c == 1 else ""), fontsize=9)
            ax.text(0.5, 0.99, "A", transform=ax.transAxes, ha="center", va="top", color="yellow", fontsize=8)
            ax.text(
                0.01, 0.5, "R", transform=ax.transAxes, ha="left", va="center", color="yellow", fontsize=8
            )
            ax.set_axis_off()
    _finish(fig, None, path, title, empty=image.size == 0)


def variant_comparison(
    path: str | Path, rows: Mapping[str, tuple[float, float]], title: str = "Rotation robustness per variant"
) -> None:
    """Bars per variant: mean Dice upright, rotated, and the drop (upright − rotated).

    Args:
        path: PNG to write.
        rows: ``{variant: (upright mean Dice, rotated mean Dice)}``; NaN draws no bar.
        title: Figure title.
    """
    names = list(rows)
    fig, ax = _figure(max(4.5, 1.6 * len(names) + 2), 4.0)
    x = np.arange(len(names))
    up = np.array([float(rows[v][0]) for v in names])
    rot = np.array([float(rows[v][1]) for v in names])
    for offset, values, label, colour in (
        (-0.27, up, "upright", "C0"),
        (0.0, rot, "rotated", "C1"),
        (0.27, up - rot, "drop", "C3"),
    ):
        ax.bar(x + offset, np.nan_to_num(values), 0.26, color=colour, label=label)
        for xi, v in zip(x + offset, values, strict=True):
            if math.isfinite(v):
                ax.text(xi, max(v, 0) + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    _class_axis(ax, names, "mean Dice")
    ax.axhline(0, color="black", lw=0.8)
    if names:
        ax.legend(fontsize=8, loc="upper right")
    _finish(fig, ax, path, title, empty=not names)


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=True)


def _finish(fig: Any, ax: Any, path: str | Path, title: str, empty: bool) -> None:
    if empty and ax is not None:
        ax.text(
            0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="gray"
        )
    if title:  # wrapped to the figure's width (about 9 characters per inch at the default 12 pt)
        import textwrap

        width = max(20, int(fig.get_figwidth() * 9))
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _class_axis(ax: Any, names: list[str], ylabel: str) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(
        names,
        rotation=30 if max((len(n) for n in names), default=0) > 6 else 0,
        ha="right" if max((len(n) for n in names), default=0) > 6 else "center",
    )
    ax.set_xlim(-0.6, max(len(names), 1) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05 if ax.get_ylim()[1] <= 1.05 else ax.get_ylim()[1])
    ax.grid(axis="y", alpha=0.3)


def _by_variant(scores: Scores | Mapping[str, Scores]) -> dict[str, dict[str, Sequence[float]]]:
    """``{class: values}`` → ``{"": {class: values}}``; ``{variant: {class: values}}`` unchanged."""
    if scores and all(isinstance(v, Mapping) for v in scores.values()):
        return {str(k): dict(v) for k, v in scores.items()}  # type: ignore[arg-type]
    return {"": dict(scores)}  # type: ignore[arg-type]


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _padded(values: Sequence[float | None], n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    for i, v in enumerate(list(values)[:n]):
        out[i] = np.nan if v is None else float(v)
    return out


def _slices(reference: np.ndarray, prediction: np.ndarray, n: int) -> list[int]:
    for label in (reference, prediction):
        zs = np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1))
        if zs.size:
            break
    else:
        zs = np.arange(reference.shape[0])
    if zs.size == 0 or n < 1:
        return []
    picks = np.quantile(zs, np.linspace(0, 1, n + 2)[1:-1] if n > 1 else [0.5], method="nearest")
    return sorted({int(z) for z in picks})


def _radiological(slice_yx: np.ndarray) -> np.ndarray:
    """Canonical axial slice [A, R] → display rows anterior-up, columns patient right on the left."""
    return slice_yx[::-1, ::-1]


def _label_colours(values: list[int]) -> tuple[Any, Any]:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    if not values:
        return None, None
    palette = [f"C{i % 10}" for i in range(len(values))]
    cmap = ListedColormap(palette)
    bounds = [v - 0.5 for v in values] + [values[-1] + 0.5]
    return cmap, BoundaryNorm(bounds, len(values))
