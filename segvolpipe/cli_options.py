"""The value types of the ``segvol`` command line's options: fixed choices (enums, so ``--help`` lists them and a
misspelt value gets "did you mean") and the parsers of sizes and durations."""

from __future__ import annotations

from enum import Enum


class Modality(str, Enum):
    ct = "ct"
    mri = "mri"


class MRIContrast(str, Enum):
    t1 = "t1"
    t2 = "t2"


def parse_size(text: str) -> tuple[int, int, int]:
    from segvolpipe.errors import UserError

    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) >= 8 for p in parts):
        raise UserError(f"--size must be three integers ≥ 8 as Z,Y,X (e.g. 64,128,128), got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


class Rule(str, Enum):
    fh = "fh"
    percentile = "percentile"


class Denoise(str, Enum):
    tv = "tv"
    gaussian = "gaussian"


class Variant(str, Enum):
    segvol = "segvol"
    so3 = "so3"
    prior = "prior"
    unet = "unet"


class Augmentation(str, Enum):  # segvolpipe.planning.plans.AUGMENTATIONS
    full = "full"
    mirror = "mirror"
    none = "none"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def parse_duration(text: str | None, option: str = "--time-budget") -> float | None:
    """``90``, ``90s``, ``10m``, ``1.5h`` → seconds (``option`` names the option in an error)."""
    from segvolpipe.errors import UserError

    if text is None:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise UserError(f"{option} {text!r} is not a duration (e.g. 600, 10m, 1.5h)") from None
    if value <= 0:
        raise UserError(f"{option} must be positive, got {text!r}")
    return value


class Mode(str, Enum):
    zoom = "zoom"
    sliding = "sliding"


class Checkpoint(str, Enum):
    final = "final"
    best = "best"
    latest = "latest"


class Coords(str, Enum):
    voxel = "voxel"
    world = "world"


class PromptKind(str, Enum):
    text = "text"
    box = "box"
    points = "points"
    box_text = "box+text"
