"""Graph-based pseudo-mask segmentation: known answers, a pure-Python FH reference, invariants."""

from __future__ import annotations

import numpy as np
import pytest

from segvolpipe.errors import UserError
from segvolpipe.pseudomask.graph import check_rule, segment_graph


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label arrays [Z, Y, X] describe the same partition, whatever the ids."""
    if a.shape != b.shape:
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def blocks(shape: tuple[int, int, int], seed: int, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Three blocks along x (values 0, 10, 20) and a fourth in the top z half of the last block; + noise."""
    truth = np.zeros(shape, np.int32)
    nx = shape[2]
    truth[:, :, : nx // 3] = 1
    truth[:, :, nx // 3 : 2 * nx // 3] = 2
    truth[:, :, 2 * nx // 3 :] = 3
    truth[: shape[0] // 2, :, 2 * nx // 3 :] = 4
    values = np.array([0.0, 0.0, 10.0, 20.0, 30.0], np.float32)
    rng = np.random.default_rng(seed)
    volume = values[truth] + rng.normal(0.0, noise, shape).astype(np.float32)
    return volume.astype(np.float32), truth


def reference_fh(
    volume: np.ndarray, k: float, diagonals: bool, percentile: float | None = None
) -> np.ndarray:
    """Plain-Python FH (or, given ``percentile``, SegVol's threshold rule); no smoothing, no min_size."""
    nz, ny, nx = volume.shape
    offsets = [(1, 0, 0), (0, 1, 0), (0, 0, 1)] + ([(0, 1, 1), (0, 1, -1)] if diagonals else [])
    edges = []  # (weight, edge index, u, v); edge index = direction * n_vox + voxel
    for d, (dz, dy, dx) in enumerate(offsets):
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    z2, y2, x2 = z + dz, y + dy, x + dx
                    if z2 < nz and y2 < ny and 0 <= x2 < nx:
                        w = float(np.abs(volume[z2, y2, x2] - volume[z, y, x]))  # float32 arithmetic
                        u = (z * ny + y) * nx + x
                        edges.append((w, d * volume.size + u, u, (z2 * ny + y2) * nx + x2))
    edges.sort()
    nonzero = [e[0] for e in edges if e[0] > 0]
    threshold = np.float32(np.percentile(nonzero, percentile)) if percentile is not None else None
    parent = {i: i for i in range(volume.size)}
    size = dict.fromkeys(parent, 1)
    internal = dict.fromkeys(parent, 0.0)

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for w, _, u, v in edges:
        a, b = find(u), find(v)
        if threshold is not None:
            merge = w < threshold
        else:
            merge = w <= min(internal[a] + k / size[a], internal[b] + k / size[b])
        if a != b and merge:
            parent[b] = a
            size[a] += size[b]
            internal[a] = w
    return np.array([find(i) for i in range(volume.size)]).reshape(volume.shape)


def test_fh_recovers_blocks() -> None:
    volume, truth = blocks((12, 16, 24), seed=0)
    # sigma 0.5: at 0.8 the blurred face of block 4 where it meets blocks 2 and 3 goes to block 3
    labels = segment_graph(volume, rule="fh", k=5.0, sigma=0.5, min_size=300)
    assert same_partition(labels, truth)


def test_percentile_recovers_blocks() -> None:
    volume, truth = blocks((12, 16, 24), seed=1)
    labels = segment_graph(volume, rule="percentile", percentile=25.0, sigma=0.5, min_size=300)
    assert same_partition(labels, truth)


@pytest.mark.parametrize("diagonals", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [0.0, 0.3, 1.0, 5.0])
def test_fh_matches_reference(seed: int, k: float, diagonals: bool) -> None:
    rng = np.random.default_rng(seed)
    volume = rng.random((4, 5, 6)).astype(np.float32)
    volume[rng.random(volume.shape) < 0.2] = 0.5  # ties in the weights exercise the tie-break
    labels = segment_graph(volume, rule="fh", k=k, sigma=0.0, min_size=1, diagonals=diagonals)
    assert same_partition(labels, reference_fh(volume, k, diagonals))


@pytest.mark.parametrize("diagonals", [False, True])
@pytest.mark.parametrize("percentile", [10.0, 25.0, 50.0])
def test_percentile_matches_reference(percentile: float, diagonals: bool) -> None:
    volume = np.random.default_rng(int(percentile)).random((4, 5, 6)).astype(np.float32)
    labels = segment_graph(
        volume, rule="percentile", percentile=percentile, sigma=0.0, min_size=1, diagonals=diagonals
    )
    assert same_partition(labels, reference_fh(volume, 0.0, diagonals, percentile))


def test_diagonals_change_the_graph() -> None:
    volume = np.zeros((1, 4, 4), np.float32)
    volume[0, [0, 1, 2, 3], [0, 1, 2, 3]] = 1.0  # a diagonal line: connected only through diagonals
    plain = segment_graph(volume, rule="fh", k=0.5, sigma=0.0, min_size=1)
    diag = segment_graph(volume, rule="fh", k=0.5, sigma=0.0, min_size=1, diagonals=True)
    assert np.unique(plain[volume == 1]).size == 4
    assert np.unique(diag[volume == 1]).size == 1


@pytest.mark.parametrize("rule", ["fh", "percentile"])
@pytest.mark.parametrize("min_size", [1, 10, 40])
def test_min_size_and_consecutive_ids(rule: str, min_size: int) -> None:
    volume = np.random.default_rng(3).random((6, 10, 12)).astype(np.float32)
    labels = segment_graph(volume, rule=rule, k=0.2, sigma=0.5, min_size=min_size)
    assert labels.dtype == np.int32 and labels.shape == volume.shape
    ids, counts = np.unique(labels, return_counts=True)
    assert np.array_equal(ids, np.arange(1, ids.size + 1))
    assert counts.min() >= min_size
    first = np.unique(labels.ravel(), return_index=True)[1]  # ids numbered by first voxel in C order
    assert np.all(np.diff(first) > 0)


def test_min_size_larger_than_volume_gives_one_region() -> None:
    volume = np.random.default_rng(4).random((3, 4, 5)).astype(np.float32)
    assert np.all(segment_graph(volume, k=0.0, sigma=0.0, min_size=1000) == 1)


@pytest.mark.parametrize("rule", ["fh", "percentile"])
def test_deterministic(rule: str) -> None:
    volume = np.random.default_rng(5).random((8, 12, 10)).astype(np.float32)
    first = segment_graph(volume, rule=rule, k=0.5, min_size=5, diagonals=True)
    second = segment_graph(volume.copy(), rule=rule, k=0.5, min_size=5, diagonals=True)
    assert np.array_equal(first, second)


def test_constant_volume_is_one_region() -> None:
    volume = np.full((4, 5, 6), 3.0, np.float32)
    for rule in ("fh", "percentile"):
        assert np.all(segment_graph(volume, rule=rule, min_size=1) == 1)


def test_anisotropic_spacing_scales_sigma() -> None:
    volume, truth = blocks((10, 16, 16), seed=6, noise=2.0)
    iso = segment_graph(volume, spacing=(1.0, 1.0, 1.0), k=2.0, sigma=1.5, min_size=20)
    aniso = segment_graph(volume, spacing=(5.0, 1.0, 1.0), k=2.0, sigma=1.5, min_size=20)
    assert not np.array_equal(iso, aniso)
    # sigma scales with the finest axis only: a uniform spacing change is a no-op
    assert np.array_equal(iso, segment_graph(volume, spacing=(2.0, 2.0, 2.0), k=2.0, sigma=1.5, min_size=20))


def test_thick_slices_keep_thin_slabs() -> None:
    """Slabs two slices thick (values 0/10 alternating along z) survive sigma only when z is coarse."""
    truth = np.repeat(np.arange(1, 5), 2)[:, None, None] * np.ones((1, 12, 12), np.int32)
    volume = (10.0 * (truth % 2)).astype(np.float32)
    volume += np.random.default_rng(7).normal(0.0, 0.3, volume.shape).astype(np.float32)
    coarse_z = segment_graph(volume, spacing=(5.0, 1.0, 1.0), k=2.0, sigma=1.5, min_size=100)
    iso = segment_graph(volume, spacing=(1.0, 1.0, 1.0), k=2.0, sigma=1.5, min_size=100)
    assert same_partition(coarse_z, truth)  # sigma_z = 0.3 voxels
    assert not same_partition(iso, truth)  # sigma_z = 1.5 voxels blurs the slabs together


def test_unknown_rule_did_you_mean() -> None:
    assert check_rule("FH") == "fh"
    with pytest.raises(UserError, match="did you mean 'percentile'"):
        segment_graph(np.zeros((2, 2, 2), np.float32), rule="percentil")
    with pytest.raises(UserError, match="did you mean 'fh'"):
        check_rule("fhh")


def test_bad_shape() -> None:
    with pytest.raises(ValueError, match="Z, Y, X"):
        segment_graph(np.zeros((4, 4), np.float32))
