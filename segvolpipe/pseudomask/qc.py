"""Quality-control figure: a few axial slices with the image, the pseudo regions and the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segvolpipe.io.atomic import atomic_path


def save_qc_png(path: Path, image: np.ndarray, pseudo: np.ndarray, seg: np.ndarray | None, title: str) -> None:
    """Write a PNG of three axial slices (25, 50, 75 % of z): image | regions | image + label contours.

    Args:
        image: float [Z, Y, X].
        pseudo: int [Z, Y, X] pseudo-mask (0 none, −1 ignore, ids).
        seg: int [Z, Y, X] labels, or None.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    n = int(pseudo.max(initial=0)) + 2
    colours = np.random.default_rng(0).uniform(0.15, 1.0, (n, 3))
    colours[0] = (0.5, 0.5, 0.5)  # −1 ignore: grey (index shifted by one)
    colours[1] = (0.0, 0.0, 0.0)  # 0 none: black
    cmap = ListedColormap(colours)
    lo, hi = np.percentile(image, (1, 99))
    zs = [max(0, min(image.shape[0] - 1, int(f * image.shape[0]))) for f in (0.25, 0.5, 0.75)]
    fig, axes = plt.subplots(3, 3, figsize=(9, 9))
    for row, z in enumerate(zs):
        # flip y so that anterior is up, as on a radiology screen
        axes[row, 0].imshow(image[z][::-1], cmap="gray", vmin=lo, vmax=hi)
        axes[row, 1].imshow(pseudo[z][::-1] + 1, cmap=cmap, vmin=0, vmax=n - 1, interpolation="nearest")
        axes[row, 2].imshow(image[z][::-1], cmap="gray", vmin=lo, vmax=hi)
        if seg is not None and seg[z].any():
            axes[row, 2].contour(seg[z][::-1], levels=np.arange(0.5, int(seg.max()) + 1), colors="r", linewidths=0.6)
        axes[row, 0].set_ylabel(f"z = {z}")
    for ax, name in zip(axes[0], ("image", "pseudo regions", "labels"), strict=True):
        ax.set_title(name)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=70)
    plt.close(fig)
