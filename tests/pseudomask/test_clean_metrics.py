"""Cleaning, ground-truth merge and best-match Dice on hand-made region maps."""

from __future__ import annotations

import numpy as np

from segvolpipe.pseudomask.case import PseudomaskSettings
from segvolpipe.pseudomask.clean import clean_regions, merge_ground_truth
from segvolpipe.pseudomask.metrics import best_match_dice, box_voxels, coverage


def _regions() -> np.ndarray:
    r = np.ones((10, 12, 12), np.int32)  # 1: everything else (air)
    r[1:9, 1:6, 1:11] = 2  # a big body region
    r[1:9, 6:11, 1:11] = 3  # another
    r[5, 8, 5] = 4  # a 1-voxel region
    return r


def test_small_regions_ignored_air_dropped_and_big_ones_kept() -> None:
    regions = _regions()
    body = regions >= 2
    out = clean_regions(regions, body, min_voxels=5, morphology=False)
    assert out[5, 8, 5] == -1  # small → ignore
    assert (out[regions == 1] == 0).all()  # mostly outside the body → no region
    assert (out[regions == 2] == 2).all()
    assert (out[(regions == 3)] == 3).all()


def test_morphology_opens_spikes_and_pieces_below_threshold_vanish() -> None:
    regions = np.ones((12, 12, 12), np.int32)
    regions[2:9, 2:9, 2:9] = 2
    regions[5, 5, 9:11] = 2  # a thin spike sticking out of the x = 8 face
    regions[0, 0, 0:3] = 2  # a detached 3-voxel piece of region 2
    body = regions == 2
    out = clean_regions(regions, body, min_voxels=10, morphology=True)
    assert out[5, 5, 10] == 0  # the spike tip is opened away
    assert (out[0, 0, 0:3] == 0).all()  # piece below the threshold dropped
    assert (out[3:8, 3:8, 3:8] == 2).all()
    # closing never takes another region's voxels
    assert set(np.unique(out)) <= {0, 2}


def test_merge_ground_truth_renumbers_after_the_classes() -> None:
    pseudo = np.array([[[0, 7, 7, -1, 9, 9, 12]]], np.int32)
    seg = np.array([[[0, 0, 2, 0, 0, 1, 0]]], np.int16)
    merged, kept = merge_ground_truth(pseudo, seg, n_classes=3)
    assert merged.tolist() == [[[0, 4, 2, -1, 5, 1, 6]]]
    assert kept == 3


def test_best_match_dice_known_answer() -> None:
    seg = np.zeros((1, 1, 10), np.int16)
    seg[0, 0, :6] = 1
    regions = np.array([[[1, 1, 1, 2, 2, 2, 2, 3, 3, 0]]], np.int32)
    # region 1 fully inside class 1; region 2 is 3/4 inside; region 3 outside
    dice = best_match_dice(regions, seg, (1, 2))
    assert dice[1] == 2 * 6 / (7 + 6)
    assert 2 not in dice  # class absent
    assert coverage(regions, np.ones_like(seg, bool)) == 0.9


def test_box_voxels_counts_the_bounding_box_of_a_mask() -> None:
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2, 3] = mask[3, 4, 5] = True
    assert box_voxels(mask) == 3 * 3 * 3
    assert box_voxels(np.zeros((4, 4, 4), bool)) == 0


def test_min_fraction_counts_the_body_box_not_the_air_around_it() -> None:
    # SegVol's code cleans a sample cropped to its foreground: the same body in a larger field of view keeps
    # the same threshold, and a volume with no body falls back to all of its voxels.
    settings = PseudomaskSettings(min_fraction=0.01)
    body = np.zeros((20, 40, 40), bool)
    body[5:15, 10:30, 10:30] = True
    wider = np.zeros((20, 80, 80), bool)
    wider[5:15, 30:50, 30:50] = True
    assert settings.min_voxels_for(body) == settings.min_voxels_for(wider) == 40
    assert settings.min_voxels_for(np.zeros((20, 40, 40), bool)) == 320
    assert PseudomaskSettings(min_fraction=0.0).min_voxels_for(body) == 1
