"""Prompts derived from a reference (evaluation and validation): boxes and points in world mm that land on the
class's voxels of any orientation of the same case."""

from __future__ import annotations

import numpy as np
import pytest

from segvolpipe.errors import UserError
from segvolpipe.inference.prompts import reference_targets, to_canonical
from segvolpipe.io.nifti import Geometry
from tests.conftest import AXCODES

LABELS = {1: "liver", 2: "spleen", 3: "aorta"}


def _reference() -> np.ndarray:
    ref = np.zeros((10, 12, 14), np.int16)
    ref[2:5, 3:7, 4:9] = 1
    ref[6:9, 1:3, 10:13] = 2
    return ref  # no aorta


@pytest.mark.parametrize("axcodes", AXCODES)
def test_boxes_and_points_land_on_their_class(axcodes) -> None:
    ref = _reference()
    geometry = Geometry.from_canonical_spec(ref.shape, (2.0, 0.7, 0.9), axcodes, (5.0, -3.0, 1.0))
    affine = geometry.canonical_affine
    boxes = reference_targets(LABELS, ref, affine, "box")
    assert [(t.value, t.name, t.text) for t in boxes] == [(1, "liver", None), (2, "spleen", None)]  # aorta absent
    corners = to_canonical(np.reshape(boxes[0].user.box, (2, 3)), geometry, "world")
    assert np.allclose(corners, [[2, 3, 4], [4, 6, 8]])
    assert [t.text for t in reference_targets(LABELS, ref, affine, "box+text")] == ["liver", "spleen"]
    points = reference_targets(LABELS, ref, affine, "points")
    for target in points:
        assert target.user.box is None and len(target.user.points) == 3
        assert all(p[3] == 1 for p in target.user.points)
        voxels = np.rint(to_canonical([p[:3] for p in target.user.points], geometry, "world")).astype(int)
        assert all(ref[tuple(v)] == target.value for v in voxels)
    again = reference_targets(LABELS, ref, affine, "points")
    assert [t.user.points for t in again] == [t.user.points for t in points]  # seeded


def test_text_names_every_class_and_unknown_kinds_are_refused() -> None:
    ref = _reference()
    texts = reference_targets(LABELS, ref, np.eye(4), "text")
    assert [(t.value, t.text, t.user) for t in texts] == [(1, "liver", None), (2, "spleen", None), (3, "aorta", None)]
    with pytest.raises(UserError, match="unknown prompt kind"):
        reference_targets(LABELS, ref, np.eye(4), "scribble")
