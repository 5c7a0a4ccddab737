"""One phantom case: anatomy + intensities + a realistic file geometry.

Case ``i`` of a dataset draws from ``np.random.SeedSequence([seed, i])``, split into three independent
streams (anatomy, contrast, geometry): a CT and an MRI dataset with the same seed therefore hold the
same patients, and the labelled subset changes only the label ids, never the anatomy.

Geometry: in-plane spacing 0.6–1.0 mm (equal for y and x), slice spacing 1.5–5 mm along z, a random
origin (table position), and with ``random_orientation`` a storage orientation drawn from common
axial ones (RAS, LPS, LAS, LPI, RPI ...) or, one case in four, a permuted (sagittal/coronal-like)
storage order such as ``("A", "S", "R")`` or ``("S", "R", "A")``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segvolpipe.io.nifti import Geometry
from segvolpipe.phantoms.anatomy import ORGAN_ID, build_anatomy
from segvolpipe.phantoms.contrast import render
from segvolpipe.phantoms.options import PhantomOptions

AXIAL_ORIENTATIONS: tuple[tuple[str, str, str], ...] = (
    ("R", "A", "S"), ("L", "P", "S"), ("L", "A", "S"), ("L", "P", "I"),
    ("R", "P", "I"), ("R", "A", "I"), ("L", "A", "I"), ("R", "P", "S"),
)
PERMUTED_ORIENTATIONS: tuple[tuple[str, str, str], ...] = (
    ("A", "S", "R"), ("S", "R", "A"), ("P", "I", "L"), ("R", "S", "A"), ("L", "I", "P"), ("A", "S", "L"),
)
INPLANE_SPACING = (0.6, 1.0)
SLICE_SPACING = (1.5, 5.0)


@dataclass(frozen=True)
class PhantomCase:
    """A generated case.

    Attributes:
        image: float32 ``[Z, Y, X]`` canonical image, exactly the values stored (HU for CT).
        label: int16 ``[Z, Y, X]`` canonical label map with the dataset's label ids.
        geometry: The file geometry (orientation, spacing, origin).
        dtype: Storage dtype of the image file.
        tissue: uint8 ``[Z, Y, X]`` canonical :class:`~.tissues.Tissue` map (ground truth of every voxel).
    """

    image: np.ndarray
    label: np.ndarray
    geometry: Geometry
    dtype: type
    tissue: np.ndarray


def label_lookup(options: PhantomOptions) -> np.ndarray:
    """int16 ``[len(ORGANS) + 1]``: anatomy organ id → the dataset's label id (0 when unlabelled)."""
    lut = np.zeros(len(ORGAN_ID) + 1, dtype=np.int16)
    for new_id, organ in enumerate(options.labelled_organs, start=1):
        lut[ORGAN_ID[organ]] = new_id
    return lut


def sample_geometry(shape: tuple[int, int, int], random_orientation: bool, rng: np.random.Generator) -> Geometry:
    """A file geometry for a canonical array of ``shape`` (z, y, x)."""
    inplane = rng.uniform(*INPLANE_SPACING)
    spacing = (rng.uniform(*SLICE_SPACING), inplane, inplane)
    if not random_orientation:
        axcodes: tuple[str, str, str] = ("R", "A", "S")
    elif rng.random() < 0.75:
        axcodes = AXIAL_ORIENTATIONS[int(rng.integers(len(AXIAL_ORIENTATIONS)))]
    else:
        axcodes = PERMUTED_ORIENTATIONS[int(rng.integers(len(PERMUTED_ORIENTATIONS)))]
    at_zero = Geometry.from_canonical_spec(shape, spacing, axcodes)
    center_index = np.array([(n - 1) / 2.0 for n in shape] + [1.0])
    center_world = (np.asarray(at_zero.canonical_affine) @ center_index)[:3]
    target = np.array([rng.uniform(-30, 30), rng.uniform(-60, 20), rng.uniform(-450, 150)])
    origin = np.round(target - center_world, 3)
    return Geometry.from_canonical_spec(shape, spacing, axcodes, origin)


def make_case(index: int, options: PhantomOptions) -> PhantomCase:
    """Generate case ``index`` of a dataset with ``options`` (deterministic in ``(options.seed, index)``)."""
    anatomy_ss, contrast_ss, geometry_ss = np.random.SeedSequence([options.seed, index]).spawn(3)
    tissue, organs = build_anatomy(options.size, np.random.default_rng(anatomy_ss))
    rendered = render(tissue, options.modality, options.mri_contrast, np.random.default_rng(contrast_ss))
    geometry = sample_geometry(options.size, options.random_orientation, np.random.default_rng(geometry_ss))
    label = label_lookup(options)[organs]
    return PhantomCase(rendered.image, label, geometry, rendered.dtype, tissue)


def make_phantom_case(index: int, options: PhantomOptions) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Generate one phantom case.

    Args:
        index: Case number (training cases first, then test cases); with ``options.seed`` it fixes the
            random stream ``np.random.SeedSequence([seed, index])``.
        options: Dataset options (modality, size, labelled organs ...).

    Returns:
        ``(image, label, geometry)``: image float32 ``[Z, Y, X]`` on the canonical grid (z Superior,
        y Anterior, x Right; Hounsfield units for CT, exactly the values the file stores), label int16
        ``[Z, Y, X]`` canonical with the dataset's label ids, and the file :class:`Geometry`.
    """
    case = make_case(index, options)
    return case.image, case.label, case.geometry
