"""Body outline, abdominal wall, cavity background and skeleton of the phantoms.

Everything is drawn in the warped body frame of :class:`~segvolpipe.phantoms.shapes.Frame`, in
cavity units (cavity half-width = 1, cavity half-depth = :attr:`Body.depth`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segvolpipe.phantoms.shapes import Frame, make_frame, smooth_field
from segvolpipe.phantoms.tissues import FREE, Tissue


@dataclass(frozen=True)
class Body:
    """Per-case body shape in cavity units (cavity half-width = 1).

    Attributes:
        depth: Cavity half-depth (anterior-posterior) over its half-width.
        muscle: Thickness of the anterior/lateral muscle wall.
        fat: Thickness of the subcutaneous fat.
        back: Thickness of the posterior wall (paraspinal muscles) behind the cavity.
    """

    depth: float
    muscle: float
    fat: float
    back: float

    @property
    def shift(self) -> float:
        """v of the centre of the outer (muscle and skin) ellipses."""
        return -(self.back - self.muscle) / 2.0

    @property
    def outer_depth(self) -> float:
        """Half-depth of the outer muscle ellipse."""
        return self.depth + (self.back + self.muscle) / 2.0

    def extent(self) -> tuple[float, float]:
        """Half-width and full anterior-posterior depth of the body, in cavity units."""
        return 1.0 + self.muscle + self.fat, 2.0 * (self.outer_depth + self.fat * 0.75)


def sample_body(rng: np.random.Generator) -> Body:
    """Random body proportions (thin to obese, round to flat)."""
    return Body(
        depth=rng.uniform(0.55, 0.68),
        muscle=rng.uniform(0.04, 0.07),
        fat=rng.uniform(0.04, 0.18),
        back=rng.uniform(0.3, 0.38),
    )


def sample_frame(shape: Sequence[int], body: Body, rng: np.random.Generator) -> Frame:
    """Patient size (body 65–90 % of the field of view wide), position and a smooth deformation.

    Args:
        shape: Canonical shape ``(Z, Y, X)``.
        body: Body proportions.
        rng: Random generator.
    """
    nz, ny, nx = (int(s) for s in shape)
    half_width, depth = body.extent()
    taper = rng.uniform(-0.08, 0.08)
    z_scale = 1.0 + taper * np.linspace(-1.0, 1.0, nz)
    fill = rng.uniform(0.65, 0.90)
    scale = fill * nx / 2.0 / half_width / float(z_scale.max())
    scale = min(scale, 0.94 * ny / depth / float(z_scale.max()))  # the front-to-back depth fits too
    slack_x = max(nx / 2.0 - half_width * scale * z_scale.max(), 0.0)
    slack_y = max(ny / 2.0 - depth / 2.0 * scale * z_scale.max(), 0.0)
    body_mid_y = (ny - 1) / 2.0 + rng.uniform(-0.7, 0.7) * slack_y
    center_x = (nx - 1) / 2.0 + rng.uniform(-0.7, 0.7) * slack_x
    # The cavity centre lies anterior to the middle of the body by half the back/front wall difference.
    front = body.depth + body.muscle + body.fat * 0.75
    center_y = body_mid_y + (depth / 2.0 - front) * scale
    amp_xy = rng.uniform(1.0, 2.5) * nx / 128.0
    amp_z = rng.uniform(0.8, 2.0) * nz / 64.0
    ctrl = (4, 6, 6)
    displacement = np.stack([
        smooth_field(shape, ctrl, rng) * np.float32(amp_z),
        smooth_field(shape, ctrl, rng) * np.float32(amp_xy * ny / nx),
        smooth_field(shape, ctrl, rng) * np.float32(amp_xy),
    ])
    return make_frame(shape, (center_x, center_y), scale, z_scale, displacement)


def paint_body(frame: Frame, body: Body, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Skin fat, muscle wall, abdominal cavity (visceral fat, bowel loops with gas, lung bases).

    Returns:
        ``(tissue uint8 [Z, Y, X], label int16 [Z, Y, X])`` (labels all 0).
    """
    u, v, w = frame.u, frame.v, frame.w
    tissue = np.full(frame.shape, Tissue.AIR, dtype=np.uint8)
    label = np.zeros(frame.shape, dtype=np.int16)
    u2 = u * u
    vs = v - np.float32(body.shift)
    skin = u2 / np.float32((1 + body.muscle + body.fat) ** 2) + (vs / np.float32(body.outer_depth + body.fat)) ** 2
    skin_mask = (skin <= 1) & (v >= np.float32(-(body.depth + body.back + body.fat * 0.5)))
    tissue[skin_mask] = Tissue.FAT
    muscle = u2 / np.float32((1 + body.muscle) ** 2) + (vs / np.float32(body.outer_depth)) ** 2
    tissue[(muscle <= 1) & skin_mask] = Tissue.MUSCLE
    cavity = u2 + (v / np.float32(body.depth)) ** 2 <= 1
    tissue[cavity] = Tissue.VISCERAL_FAT
    # Bowel loops, more of them low and anteriorly, none in the retroperitoneum.
    # The band around the zero level of a smooth random field gives winding, tube-like loops.
    loops = smooth_field(frame.shape, (10, 18, 18), rng)
    where = np.float32(0.1) + 0.9 * np.clip(w + 0.1, 0, None) - 0.8 * (v / np.float32(body.depth)) + 0.2 * u2
    bowel = cavity & (np.abs(loops) < np.float32(0.45)) & (where < np.float32(0.7))
    tissue[bowel] = Tissue.BOWEL
    gas = smooth_field(frame.shape, (8, 14, 14), rng)
    tissue[bowel & (gas > 1.6)] = Tissue.BOWEL_GAS
    # Lung bases in the posterior costophrenic recesses on the top slices.
    lung = cavity & (w > np.float32(0.8) + np.float32(0.3) * v / np.float32(body.depth))
    tissue[lung] = Tissue.LUNG
    return tissue, label


def paint_spine(frame: Frame, body: Body, tissue: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Vertebral bodies (cortical shell, cancellous core) with discs, canal, posterior elements, psoas.

    Returns:
        Landmarks ``{"u", "v", "r"}``: centre and radius of the vertebral bodies (for the aorta).
    """
    r = rng.uniform(0.12, 0.15)
    cu, cv = rng.uniform(-0.03, 0.03), -body.depth + rng.uniform(0.03, 0.07)
    period, phase = rng.uniform(0.38, 0.46), rng.uniform(0.0, 1.0)
    box = frame.box((cu - 0.45, cu + 0.45), (cv - r - body.back, cv + r + 0.3))
    sub_u, sub_v, sub_w = frame.u[box] - np.float32(cu), frame.v[box] - np.float32(cv), frame.w[box]
    seg = (sub_w / np.float32(period) + np.float32(phase)) % 1.0  # position within one vertebra + disc
    disc = seg < 0.2
    t = tissue[box]
    in_body = t != Tissue.AIR
    vb = (sub_u / np.float32(r * 1.1)) ** 2 + (sub_v / np.float32(r)) ** 2
    vertebra = (vb <= 1) & in_body
    t[vertebra] = np.where(disc, Tissue.DISC, np.where(vb > 0.72, Tissue.CORTICAL, Tissue.CANCELLOUS))[vertebra]
    canal_v = -r - 0.065
    rc = (sub_u / np.float32(0.06)) ** 2 + ((sub_v - np.float32(canal_v)) / np.float32(0.055)) ** 2
    lamina = (rc > 1) & (rc < 3.2) & (sub_v < np.float32(canal_v + 0.02)) & ~disc
    spinous = (sub_u / np.float32(0.035)) ** 2 + ((sub_v - np.float32(canal_v - 0.13)) / np.float32(0.1)) ** 2
    transverse = (np.abs(sub_u) / np.float32(0.24)) ** 2 + ((sub_v - np.float32(canal_v + 0.01)) / np.float32(0.04)) ** 2
    t[(lamina | ((transverse <= 1) & (seg > 0.45) & (seg < 0.75))) & in_body] = Tissue.CORTICAL
    spin = (spinous <= 1) & ~disc & in_body
    t[spin] = np.where(spinous > 0.45, Tissue.CORTICAL, Tissue.CANCELLOUS)[spin]
    t[(rc <= 1) & in_body] = Tissue.CSF
    # Psoas muscles beside the vertebral bodies, growing towards the pelvis.
    for side in (-1.0, 1.0):
        grow = np.clip((np.float32(0.35) - sub_w) / np.float32(1.35), 0, None)
        radius = np.float32(0.035) + np.float32(0.09) * grow
        pu = sub_u - np.float32(side * (r + 0.06)) - np.float32(side) * radius
        pv = sub_v - np.float32(0.05)
        psoas = (pu * pu + pv * pv <= radius * radius) & (sub_w < np.float32(0.35)) & FREE[t]
        t[psoas] = Tissue.MUSCLE
    return {"u": cu, "v": cv, "r": r}


def paint_ribs(frame: Frame, body: Body, tissue: np.ndarray, rng: np.random.Generator) -> None:
    """Rib cross-sections in the wall of the upper abdomen (lateral and posterior), sloping anteriorly."""
    thickness = np.float32(rng.uniform(0.06, 0.09))
    inner = np.float32(1.0 + rng.uniform(0.0, 0.02))
    per_unit, phase = rng.uniform(2.2, 2.8), rng.uniform(0.0, 1.0)
    box = frame.box((-1.2, 1.2), (-body.depth * 1.2, body.depth * 1.2), (-0.45, 2.0))
    u, v = frame.u[box], frame.v[box] / np.float32(body.depth)
    rho2 = u * u + v * v
    ring = (rho2 > inner * inner) & (rho2 < (inner + thickness) ** 2) & (tissue[box] != Tissue.AIR)
    idx = np.nonzero(ring)
    uu, vv, ww = u[idx], v[idx], frame.w[box][idx]
    rho = np.sqrt(uu * uu + vv * vv)
    theta = np.arctan2(vv, uu)
    s = np.sin(theta)
    # Ribs descend from the spine (theta = -pi/2) round to the front: the slope cuts them into segments.
    around = np.abs(((theta + np.float32(np.pi / 2) + np.float32(np.pi)) % np.float32(2 * np.pi)) - np.float32(np.pi))
    frac = ((ww + np.float32(0.35) * around) * np.float32(per_unit) + np.float32(phase)) % 1.0
    duty = np.float32(0.36)
    lowest = np.float32(-0.4) + np.float32(0.45) * np.clip(s, 0, None)
    rib = (frac < duty) & (np.abs(theta - np.pi / 2) > 0.75) & (np.abs(theta + np.pi / 2) > 0.3) & (ww > lowest)
    edge = np.maximum(np.abs(rho - inner - thickness / 2) / (thickness / 2), np.abs(frac - duty / 2) / (duty / 2))
    values = np.where(edge > 0.55, Tissue.CORTICAL, Tissue.CANCELLOUS).astype(np.uint8)
    sub = tissue[box]
    sub[tuple(i[rib] for i in idx)] = values[rib]
