"""The abdominal organs of the phantom, painted into the tissue and label maps of :mod:`.anatomy`.

All positions are in the body frame of :class:`~segvolpipe.phantoms.shapes.Frame` (``u`` to the
patient's right, ``v`` anterior, ``w`` superior; cavity half-width = 1, cavity half-depth = ``q``).
Every organ's size varies by ±15 % per case and its position by a few percent. Organs paint only free
(cavity background) voxels, in priority order: vessels, kidneys, pancreas, stomach, spleen,
gallbladder, liver, then the colon in what is left. The retroperitoneal organs (aorta, kidneys, pancreas) lie
in a layer of fat, which is not free, so the intraperitoneal organs painted later never touch them directly.
"""

from __future__ import annotations

import numpy as np

from segvolpipe.phantoms.body import Body
from segvolpipe.phantoms.options import ORGANS
from segvolpipe.phantoms.shapes import Frame, ellipsoid, ellipsoid_box, paint
from segvolpipe.phantoms.tissues import FREE, Tissue

ORGAN_ID: dict[str, int] = {name: i + 1 for i, name in enumerate(ORGANS)}
F32 = np.float32


def paint_organs(
    frame: Frame, body: Body, tissue: np.ndarray, label: np.ndarray, spine: dict[str, float], rng: np.random.Generator
) -> None:
    """Paint all organs and the unlabelled distractors (IVC, iliac arteries, gallbladder, colon) in place.

    Args:
        frame: Body coordinates.
        body: Body proportions.
        tissue: uint8 ``[Z, Y, X]`` tissue map (body and skeleton already painted).
        label: int16 ``[Z, Y, X]`` organ map; organ ids follow :data:`ORGANS` (1..7).
        spine: Vertebral body centre and radius from :func:`~.anatomy.paint_spine`.
        rng: Random generator.
    """
    size = {organ: rng.uniform(0.85, 1.15) for organ in ORGANS}
    vessels = _vessels(frame, tissue, label, spine, size["aorta"], rng)
    _kidneys(frame, body, tissue, label, size, rng)
    _pancreas(frame, tissue, label, vessels, size["pancreas"], rng)
    _stomach(frame, body, tissue, label, size["stomach"], rng)
    _spleen(frame, body, tissue, label, size["spleen"], rng)
    liver_top = rng.uniform(0.35, 0.55)
    if rng.random() < 0.75:
        center = (0.3 + rng.uniform(-0.04, 0.04), 0.3 * body.depth, liver_top - 0.45)
        radii = (0.07, 0.09, 0.16)
        box = ellipsoid_box(frame, center, radii)
        paint(tissue, label, box, ellipsoid(frame, box, center, radii, 0.4) <= 1, Tissue.GALLBLADDER, 0, FREE)
    _liver(frame, body, tissue, label, vessels, liver_top, size["liver"], rng)
    _colon(frame, body, tissue, label, rng)


def _vessels(
    frame: Frame, tissue: np.ndarray, label: np.ndarray, spine: dict[str, float], scale: float, rng: np.random.Generator
) -> dict[str, float]:
    """Aorta (labelled down to its bifurcation), iliac arteries and inferior vena cava (unlabelled)."""
    ra = 0.075 * scale
    ua = spine["u"] - 0.09 + rng.uniform(-0.02, 0.02)
    va = spine["v"] + spine["r"] + ra + 0.03
    split = rng.uniform(-0.8, -0.55)
    box = frame.box((ua - 0.6, ua + 0.6), (va - ra - 0.05, va + ra + 0.1))
    u, v, w = frame.u[box], frame.v[box], frame.w[box]
    du, dv = u - F32(ua) - F32(0.03) * w, v - F32(va) - F32(0.02) * w * w
    aorta = (du * du + dv * dv <= F32(ra * ra)) & (w >= F32(split))
    paint(tissue, label, box, aorta, Tissue.AORTA, ORGAN_ID["aorta"], FREE)
    below = w < F32(split + 0.05)
    for side in (-1.0, 1.0):
        di = du - F32(side * 0.45) * np.clip(F32(split) - w, 0, None)
        iliac = below & (di * di + dv * dv <= F32((0.7 * ra) ** 2))
        paint(tissue, label, box, iliac, Tissue.AORTA, 0, FREE)
    # Periaortic retroperitoneal fat (behind the peritoneum and the diaphragmatic crura): the liver and the bowel,
    # painted later, never lie against the aortic wall.
    sheath = ra + _fat_margins(frame, rng, 0.02, 0.05)[0]
    paint(tissue, label, box, (du * du + dv * dv <= F32(sheath * sheath)) & (w >= F32(split)), Tissue.FAT, 0, FREE)
    ui, vi = spine["u"] + 0.14 + rng.uniform(-0.02, 0.02), va - 0.01
    box = frame.box((ui - 0.15, ui + 0.15), (vi - 0.1, vi + 0.1), (split - 0.1, 1.0))
    ivc = ellipsoid(frame, box, (ui, vi, 0.0), (0.09 * scale, 0.06 * scale, 1e6), 0.3) <= 1
    ivc &= (frame.w[box] > F32(split - 0.05)) & (frame.w[box] < F32(0.95))
    paint(tissue, label, box, ivc, Tissue.IVC, 0, FREE)
    return {"aorta_u": ua, "aorta_v": va, "aorta_r": ra, "ivc_u": ui, "ivc_v": vi}


def _fat_margins(frame: Frame, rng: np.random.Generator, low: float, high: float) -> tuple[float, float]:
    """Thickness of a fat layer in body units, in-plane and along ``w``: drawn from ``[low, high)``, and at least
    2 voxels in-plane and 1.5 slices on any grid, so that no face of the organ inside touches another organ."""
    margin = rng.uniform(low, high)
    return max(margin, 2.0 / frame.scale), max(margin, 3.0 / max(frame.shape[0] - 1, 1))


def _kidneys(
    frame: Frame, body: Body, tissue: np.ndarray, label: np.ndarray, size: dict[str, float], rng: np.random.Generator
) -> None:
    """Bean-shaped kidneys with cortex and lobulated medulla in a shell of fat; the right one lower, hila anteromedial."""
    top = rng.uniform(-0.2, 0.02)
    for organ, side, drop in (("left_kidney", -1.0, 0.0), ("right_kidney", 1.0, 0.12)):
        s = size[organ]
        center = (side * (0.4 + rng.uniform(-0.03, 0.03)), -body.depth + 0.32 + rng.uniform(-0.03, 0.03),
                  top - drop + rng.uniform(-0.03, 0.03))
        radii = (0.15 * s, 0.21 * s, 0.36 * s)
        angle = float(np.arctan2(0.8, -side))  # local +u axis points to the hilum (medial and anterior)
        box = ellipsoid_box(frame, center, radii)
        f = ellipsoid(frame, box, center, radii, angle)
        hilum_c = (center[0] - side * 0.8 * radii[0] * 0.78, center[1] + 0.8 * radii[0] * 0.62, center[2])
        notch = ellipsoid(frame, box, hilum_c, (0.06 * s, 0.08 * s, 0.15 * s), angle)
        kidney = (f <= 1) & (notch > 1)
        du = frame.u[box] - F32(center[0])
        dv = frame.v[box] - F32(center[1])
        phi = np.arctan2(dv, du)
        # Medulla inside ~55 % of the radius: the cortex stays a few voxels thick under the partial-volume blur.
        lobes = F32(0.3) * (F32(1) + F32(0.3) * np.cos(F32(6) * phi + F32(rng.uniform(0, 2 * np.pi))))
        values = np.where(f < lobes, Tissue.KIDNEY_MEDULLA, Tissue.KIDNEY_CORTEX).astype(np.uint8)
        paint(tissue, label, box, kidney, values, ORGAN_ID[organ], FREE)
        # Perirenal fat (inside Gerota's fascia) around the kidney and sinus fat filling the hilum: fat is not free,
        # so the liver, spleen and pancreas painted later never touch the renal parenchyma directly.
        along_uv, along_w = _fat_margins(frame, rng, 0.03, 0.07)
        outer = (radii[0] + along_uv, radii[1] + along_uv, radii[2] + along_w)
        box = ellipsoid_box(frame, center, outer)
        shell = ellipsoid(frame, box, center, outer, angle) <= 1
        paint(tissue, label, box, shell, Tissue.FAT, 0, FREE)


def _pancreas(
    frame: Frame, tissue: np.ndarray, label: np.ndarray, vessels: dict[str, float], scale: float, rng: np.random.Generator
) -> None:
    """An elongated, lobulated organ from the head (right of midline) across the aorta to the tail, in
    retroperitoneal fat."""
    head, tail = rng.uniform(0.2, 0.3), -rng.uniform(0.5, 0.6)
    v0 = vessels["aorta_v"] + vessels["aorta_r"] + 0.07
    w0 = rng.uniform(-0.1, 0.1)
    box = frame.box((tail - 0.22, head + 0.22), (v0 - 0.28, v0 + 0.24), (w0 - 0.35, w0 + 0.52))
    u, v, w = frame.u[box], frame.v[box], frame.w[box]
    uc = np.clip(u, F32(tail), F32(head))
    wobble = F32(1) + F32(0.12) * np.sin(uc * F32(rng.uniform(12, 18)) + F32(rng.uniform(0, 2 * np.pi)))
    head_part = np.clip(uc / F32(0.2), 0, 1)
    rv = (F32(0.06) + F32(0.04) * head_part) * wobble * F32(scale)
    rw = (F32(0.12) + F32(0.06) * head_part) * F32(scale)
    vc = F32(v0) - F32(0.15) * np.clip(-uc - F32(0.2), 0, None)
    wc = F32(w0) + F32(0.35) * np.clip(-uc, 0, None) - F32(0.05) * head_part
    f = ((u - uc) / rv) ** 2 + ((v - vc) / rv) ** 2 + ((w - wc) / rw) ** 2
    paint(tissue, label, box, f <= 1, Tissue.PANCREAS, ORGAN_ID["pancreas"], FREE)
    # Peripancreatic fat: the liver, stomach and spleen, painted later, are separated from it as in the abdomen (the
    # lesser sac in front, the retroperitoneum around), not laid against it at nearly the same density.
    along_uv, along_w = _fat_margins(frame, rng, 0.02, 0.05)
    ruv, rww = rv + F32(along_uv), rw + F32(along_w)
    rim = ((u - uc) / ruv) ** 2 + ((v - vc) / ruv) ** 2 + ((w - wc) / rww) ** 2 <= 1
    paint(tissue, label, box, rim, Tissue.FAT, 0, FREE)


def _stomach(
    frame: Frame, body: Body, tissue: np.ndarray, label: np.ndarray, scale: float, rng: np.random.Generator
) -> None:
    """Fundus/body (left, high) and antrum (anterior, towards the midline): wall, contents, anterior gas."""
    ws = rng.uniform(0.35, 0.55)
    c1 = (-0.4 + rng.uniform(-0.03, 0.03), 0.05, ws)
    r1 = (0.3 * scale, 0.28 * scale, 0.38 * scale)
    c2 = (-0.05, 0.55 * body.depth, ws - 0.3)
    r2 = (0.22 * scale, 0.1 * scale, 0.13 * scale)
    box = frame.box((-1.0, 0.3), (-body.depth, body.depth), (ws - 0.55, ws + 0.4))
    f = np.minimum(ellipsoid(frame, box, c1, r1, 0.5), ellipsoid(frame, box, c2, r2, -0.3))
    gas_level = F32(c1[1] + r1[1] * (1 - 2 * rng.uniform(0.12, 0.45)))
    content = np.where(frame.v[box] > gas_level, Tissue.GAS, Tissue.STOMACH_CONTENT)
    values = np.where(f > 0.62, Tissue.STOMACH_WALL, content).astype(np.uint8)
    paint(tissue, label, box, f <= 1, values, ORGAN_ID["stomach"], FREE)


def _spleen(
    frame: Frame, body: Body, tissue: np.ndarray, label: np.ndarray, scale: float, rng: np.random.Generator
) -> None:
    """A crescent against the left posterolateral wall (concave towards the hilum)."""
    q = body.depth
    center = (-0.66 + rng.uniform(-0.03, 0.03), -0.45 * q + rng.uniform(-0.03, 0.03), rng.uniform(0.3, 0.5))
    normal = np.array([center[0], center[1] / (q * q)])
    normal /= np.linalg.norm(normal)
    angle = float(np.arctan2(normal[1], normal[0]))  # local +u axis points out to the wall
    radii = (0.15 * scale, 0.36 * scale, 0.32 * scale)
    inner = (center[0] - normal[0] * radii[0] * 1.8, center[1] - normal[1] * radii[0] * 1.8, center[2])
    box = ellipsoid_box(frame, center, radii)
    spleen = ellipsoid(frame, box, center, radii, angle) <= 1
    spleen &= ellipsoid(frame, box, inner, (radii[0], radii[1] * 0.7, radii[2] * 0.8), angle) > 1
    paint(tissue, label, box, spleen, Tissue.SPLEEN, ORGAN_ID["spleen"], FREE)


def _liver(
    frame: Frame,
    body: Body,
    tissue: np.ndarray,
    label: np.ndarray,
    vessels: dict[str, float],
    top: float,
    scale: float,
    rng: np.random.Generator,
) -> None:
    """Right lobe filling the right upper quadrant, left lobe across the midline; vessels, lesions."""
    q = body.depth
    c1 = (0.42 + rng.uniform(-0.04, 0.04), -0.05, top)
    r1 = (0.58 * scale, 0.72 * scale, 0.68 * scale)
    c2 = (-0.12, 0.45 * q, top + 0.12)
    r2 = (0.42 * scale, 0.25 * scale, 0.35 * scale)
    box = frame.box((-0.6, 1.1), (-q, q), (top - 0.75 * scale, 1.5))
    f = np.minimum(ellipsoid(frame, box, c1, r1, 0.0), ellipsoid(frame, box, c2, r2, 0.25))
    liver = paint(tissue, label, box, f <= 1, Tissue.LIVER, ORGAN_ID["liver"], FREE)
    u, v, w = frame.u[box], frame.v[box], frame.w[box]
    start = np.array([vessels["ivc_u"], vessels["ivc_v"] + 0.05, top + 0.3])
    sub = tissue[box]
    for _ in range(int(rng.integers(3, 6))):  # hepatic veins converging on the IVC
        direction = np.array([rng.uniform(-0.3, 1.0), rng.uniform(-0.2, 0.8), rng.uniform(-0.9, -0.2)])
        direction /= np.linalg.norm(direction)
        du, dv, dw = u - F32(start[0]), v - F32(start[1]), w - F32(start[2])
        t = du * F32(direction[0]) + dv * F32(direction[1]) + dw * F32(direction[2])
        dist2 = du * du + dv * dv + dw * dw - t * t
        radius = F32(0.035) * np.clip(F32(1) - t / F32(0.9), F32(0.3), F32(1))
        sub[liver & (t > 0) & (dist2 < radius * radius)] = Tissue.LIVER_VESSEL
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 3))):
            c = (c1[0] + rng.uniform(-0.3, 0.3), c1[1] + rng.uniform(-0.3, 0.3), top + rng.uniform(-0.3, 0.3))
            r = rng.uniform(0.04, 0.09)
            lesion = ellipsoid(frame, box, c, (r, r, r * 1.5)) <= 1
            sub[liver & lesion] = Tissue.LIVER_LESION


def _colon(frame: Frame, body: Body, tissue: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> None:
    """Ascending, descending (along z) and transverse (along x) colon with gas or faeces; unlabelled."""
    q = body.depth
    for side, cv in ((1.0, -0.05 * q), (-1.0, -0.2 * q)):
        cu, r, phase = side * rng.uniform(0.7, 0.78), rng.uniform(0.08, 0.11), rng.uniform(0, 2 * np.pi)
        box = frame.box((cu - r - 0.1, cu + r + 0.1), (cv - r - 0.1, cv + r + 0.1), (-1.5, 0.2))
        du = frame.u[box] - F32(cu) - F32(0.04) * np.sin(frame.w[box] * F32(3) + F32(phase))
        dv = frame.v[box] - F32(cv)
        _paint_tube(tissue, label, box, (du * du + dv * dv) / F32(r * r), frame.w[box] < F32(0.15), rng)
    cw, cv, r = rng.uniform(-0.15, 0.1), 0.5 * q, rng.uniform(0.07, 0.1)
    box = frame.box((-0.8, 0.8), (cv - r - 0.2, cv + r + 0.15), (cw - 3 * r - 0.2, cw + 3 * r + 0.2))
    u = frame.u[box]
    haustra = F32(1) + F32(0.2) * np.sin(u * F32(rng.uniform(14, 20)))  # sacculations along the colon
    dw = (frame.w[box] - F32(cw) + F32(0.2) * u * u) / (F32(2) * haustra)  # sagging in the middle
    dv = (frame.v[box] - F32(cv) + F32(0.15) * u * u) / haustra
    _paint_tube(tissue, label, box, (dw * dw + dv * dv) / F32(r * r), np.abs(u) < F32(0.8), rng)


def _paint_tube(
    tissue: np.ndarray,
    label: np.ndarray,
    box: tuple[slice, slice, slice],
    f: np.ndarray,
    keep: np.ndarray,
    rng: np.random.Generator,
) -> None:
    lumen = Tissue.BOWEL_GAS if rng.random() < 0.6 else Tissue.BOWEL_CONTENT
    values = np.where(f < 0.55, lumen, Tissue.BOWEL).astype(np.uint8)
    paint(tissue, label, box, (f <= 1) & keep, values, 0, FREE)
