"""``progress.png``: training loss, validation Dice (and its EMA), learning rate and epoch time per epoch."""

from __future__ import annotations

import json
from pathlib import Path

from segvolpipe.io.atomic import atomic_path


def read_log(path: Path) -> list[dict]:
    """The records of ``training_log.jsonl`` (one JSON object per epoch)."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "epoch" in r]


def plot_progress(log: Path, out: Path) -> None:
    """Four panels from the training log, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log)
    if not records:
        return
    epochs = [r["epoch"] for r in records]

    def series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else r[key] for r in records]

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(epochs, series("train_loss"), color="tab:blue")
    ax.set(title="training loss", xlabel="epoch")
    ax = axes[0, 1]
    ax.plot(epochs, series("val_dice"), "o-", ms=3, label="text prompts", color="tab:green")
    if any(r.get("val_dice_box") is not None for r in records):
        ax.plot(epochs, series("val_dice_box"), "o-", ms=3, label="box + text", color="tab:orange")
    ax.plot(epochs, series("ema_dice"), "-", lw=2, label="EMA (picks best)", color="black")
    ax.set(title="validation Dice", xlabel="epoch", ylim=(0, 1))
    ax.legend(loc="lower right")
    ax = axes[1, 0]
    ax.plot(epochs, series("lr"), color="tab:purple")
    ax.set(title="learning rate", xlabel="epoch")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax = axes[1, 1]
    ax.plot(epochs, series("epoch_s"), color="tab:gray")
    ax.set(title="epoch time (s)", xlabel="epoch")
    for a in axes.flat:
        a.grid(alpha=0.3)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
