"""The phantom's anatomy: a tissue map and an organ label map on the canonical (z, y, x) grid.

Axis 0 (z) points Superior, axis 1 (y) Anterior and axis 2 (x) to the patient's Right (the canonical
grid of :mod:`segvolpipe.io.nifti`), so the liver lies at high x, the spleen at low x and the spine at
low y.

The anatomy is modelled in *body-relative* coordinates (:class:`~segvolpipe.phantoms.shapes.Frame`:
``u`` right, ``v`` anterior in units of the abdominal cavity's half-width, ``w`` from -1 on the first
(inferior) slice to +1 on the last (superior) one). It therefore fills the field of view whatever the
voxel spacing: a 64×128×128 phantom is a complete, miniature abdomen from the liver dome (lung bases on
the top slices) to below the aortic bifurcation, and its physical size follows from the spacing drawn
for the file. Per case the body fills 65–90 % of the in-plane field of view, is offset within it, has
random proportions (fat and muscle thickness, depth, taper along z), is deformed by a smooth random
displacement field of a few voxels, and each organ's size varies by ±15 %.

Painting order: body layers (skin fat, muscle wall, cavity with visceral fat, bowel loops and lung
bases), the skeleton (spine, ribs) over them, then the organs, which paint only free (cavity
background) voxels, so the first organ painted wins where two would overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segvolpipe.phantoms.body import paint_body, paint_ribs, paint_spine, sample_body, sample_frame
from segvolpipe.phantoms.organs import ORGAN_ID, paint_organs
from segvolpipe.phantoms.tissues import Tissue

__all__ = ["ORGAN_ID", "Tissue", "build_anatomy"]


def build_anatomy(shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one random abdomen.

    Args:
        shape: Canonical shape ``(Z, Y, X)``.
        rng: Random generator (the case's own).

    Returns:
        ``(tissue, label)``: uint8 ``[Z, Y, X]`` :class:`Tissue` map and int16 ``[Z, Y, X]`` organ map
        with ids 1..7 in the order of :data:`~segvolpipe.phantoms.options.ORGANS` (0 elsewhere).
    """
    body = sample_body(rng)
    frame = sample_frame(shape, body, rng)
    tissue, label = paint_body(frame, body, rng)
    spine = paint_spine(frame, body, tissue, rng)
    paint_ribs(frame, body, tissue, rng)
    paint_organs(frame, body, tissue, label, spine, rng)
    return tissue, label
