"""Every figure writes a PNG, atomically, and survives NaN scores and empty inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from segvolpipe.evaluation.plots import (
    dice_violins,
    dice_vs_angle,
    overlay_slices,
    rotation_bars,
    variant_comparison,
)

NAN = math.nan
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_dice_violins_per_class_and_per_variant(tmp_path: Path) -> None:
    dice_violins(tmp_path / "a.png", {"liver": [0.9, 0.95, NAN, 0.92], "spleen": [0.5], "kidney": [NAN, NAN]})
    assert_png(tmp_path / "a.png")
    dice_violins(
        tmp_path / "b.png",
        {
            "segvol": {"liver": [0.9, 0.8], "spleen": [0.7, 0.7]},
            "so3": {"liver": [0.85, 0.6, 0.7], "stomach": []},
        },
        title="fold 0",
    )
    assert_png(tmp_path / "b.png")
    dice_violins(tmp_path / "empty.png", {})
    assert_png(tmp_path / "empty.png")


def test_rotation_bars(tmp_path: Path) -> None:
    classes = ["liver", "spleen", "stomach"]
    rotation_bars(
        tmp_path / "bars.png",
        classes,
        {"segvol": [0.96, 0.96, 0.91], "so3": [0.9, NAN, 0.8]},
        {"segvol": [0.95, 0.85, 0.65], "so3": [0.89, NAN]},
    )  # a short list is padded with NaN
    assert_png(tmp_path / "bars.png")
    rotation_bars(tmp_path / "empty.png", [], {}, {})
    assert_png(tmp_path / "empty.png")


def test_dice_vs_angle(tmp_path: Path) -> None:
    angles = [0, 15, 30, 45, 60, 90]
    curves = {
        "segvol": {"liver": [0.96, 0.95, 0.94, 0.93, 0.92, 0.9], "mean": [0.8, 0.78, NAN, 0.7, 0.68, 0.6]},
        "so3": {"mean": [0.7] * 6},
    }
    dice_vs_angle(tmp_path / "sweep.png", angles, curves)
    assert_png(tmp_path / "sweep.png")
    dice_vs_angle(tmp_path / "empty.png", [], {})
    assert_png(tmp_path / "empty.png")


def test_overlay_slices(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 20, 16)).astype(np.float32)
    reference = np.zeros(image.shape, np.int16)
    reference[3:9, 5:12, 4:10] = 1
    reference[5:7, 14:18, 10:14] = 3
    prediction = np.roll(reference, 1, axis=2)
    overlay_slices(tmp_path / "overlay.png", image[None], reference, prediction, n=3, spacing=(3.0, 0.8, 0.8))
    assert_png(tmp_path / "overlay.png")
    empty = np.zeros_like(reference)
    overlay_slices(tmp_path / "nothing.png", image, empty, empty, n=2)  # no foreground anywhere
    assert_png(tmp_path / "nothing.png")
    with pytest.raises(ValueError, match="shapes differ"):
        overlay_slices(tmp_path / "bad.png", image, reference, prediction[:-1])


def test_variant_comparison(tmp_path: Path) -> None:
    variant_comparison(
        tmp_path / "cmp.png", {"segvol": (0.83, 0.76), "so3": (0.25, 0.26), "unet": (NAN, 0.5)}
    )
    assert_png(tmp_path / "cmp.png")
    variant_comparison(tmp_path / "empty.png", {})
    assert_png(tmp_path / "empty.png")
