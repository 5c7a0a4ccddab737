"""Graph-based 3D over-segmentation (SegVol's pseudo-masks): voxels are nodes, a union-find merges them.

Each voxel is joined to its forward face neighbours (+z, +y, +x) and, optionally, to SegVol's two
forward in-plane diagonals (0, +1, +1) and (0, +1, -1). An edge weighs the absolute difference of the
Gaussian-smoothed volume at its two ends. Edges are sorted once (stable: ties keep edge-index order,
edges numbered ``direction * Z*Y*X + voxel`` in C order) and then swept by one of two rules:

* ``"fh"``: Felzenszwalb & Huttenlocher (2004), merge C1, C2 over an edge of weight w when
  ``w <= min(Int(C1) + k/|C1|, Int(C2) + k/|C2|)``, Int being the largest MST edge inside a component;
* ``"percentile"``: SegVol's shipped rule, merge every edge lighter than a percentile of the non-zero
  edge weights.

A second sweep over the same order merges every component smaller than ``min_size`` into its cheapest
neighbour, and the roots are renumbered 1..R by their first voxel in C order. The loops are compiled
with numba; the sort is a stable three-pass LSD radix sort on the float32 bit patterns (which order
exactly like the non-negative weights themselves), so the order equals ``np.argsort(w, kind="stable")``.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import ndimage

from segvolpipe.errors import check_choice

RULES: tuple[str, ...] = ("fh", "percentile")
MERGE_ALWAYS = np.iinfo(np.int32).max  # a min_size no component reaches: the size sweep merges every edge

#: Forward neighbour offsets (dz, dy, dx): the three faces, then SegVol's two in-plane diagonals.
FACE_OFFSETS: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
DIAGONAL_OFFSETS: tuple[tuple[int, int, int], ...] = ((0, 1, 1), (0, 1, -1))


def check_rule(name: str) -> str:
    """Return ``name`` (lower-cased) when it is a known merge rule (``"fh"``, ``"percentile"``), else raise."""
    return check_choice(str(name).strip().lower(), RULES, "pseudo-mask rule")


def segment_graph(
    volume: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    rule: str = "fh",
    k: float = 1.0,
    sigma: float = 0.8,
    min_size: int = 50,
    percentile: float = 25.0,
    diagonals: bool = False,
) -> np.ndarray:
    """Over-segment a volume into regions with a graph-based union-find.

    Args:
        volume: Image [Z, Y, X], already normalised (cast to float32).
        spacing: Voxel size in mm, (z, y, x); only scales the smoothing.
        rule: ``"fh"`` (Felzenszwalb-Huttenlocher) or ``"percentile"`` (SegVol's threshold).
        k: FH scale constant; larger gives larger regions (rule ``"fh"`` only).
        sigma: Gaussian sigma in voxels of the finest axis; axis a gets
            ``sigma * min(spacing) / spacing[a]``. 0 disables smoothing.
        min_size: Components smaller than this (voxels) are merged into their cheapest neighbour.
        percentile: Rule ``"percentile"``: merge every edge lighter than this percentile (0-100) of the
            non-zero finite edge weights.
        diagonals: Also use the in-plane diagonal edges (0, +1, +1) and (0, +1, -1).

    Returns:
        Region ids [Z, Y, X], int32, consecutive 1..R numbered by first voxel in C order.

    Raises:
        UserError: For an unknown rule.
        ValueError: For a volume that is not 3D or out-of-range parameters.
    """
    rule = check_rule(rule)
    vol = np.asarray(volume)
    if vol.ndim != 3 or vol.size == 0:
        raise ValueError(f"segment_graph needs a non-empty [Z, Y, X] volume, got shape {vol.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x), got {spacing}")
    if sigma < 0 or k < 0 or not 0.0 <= percentile <= 100.0:
        raise ValueError(
            f"need sigma >= 0, k >= 0 and 0 <= percentile <= 100 (got {sigma}, {k}, {percentile})"
        )
    offsets = FACE_OFFSETS + (DIAGONAL_OFFSETS if diagonals else ())
    n_vox = vol.size
    if len(offsets) * n_vox >= 2**31:
        raise ValueError(f"volume of {n_vox} voxels has too many edges for int32 edge ids")

    smooth = _smooth(vol, spacing, sigma)
    keys, ids = _build_edges(smooth, np.asarray(offsets, np.int64))
    keys, ids = _radix_argsort(keys, ids)
    weights = keys.view(np.float32)
    n_finite = int(np.searchsorted(keys, np.uint32(0x7F800000)))  # +inf / NaN sort last: never used
    shifts = np.asarray([dz * vol.shape[1] * vol.shape[2] + dy * vol.shape[2] + dx for dz, dy, dx in offsets])

    parent = np.arange(n_vox, dtype=np.int32)
    size = np.ones(n_vox, dtype=np.int32)
    if rule == "fh":
        n_left = _fh_sweep(ids, weights, n_finite, n_vox, shifts, float(k), parent, size)
        left = ids[:n_left]  # the rejected edges, still in sorted order: only they can join components
    else:
        threshold = _percentile_threshold(weights[:n_finite], percentile)
        n_below = int(np.count_nonzero(weights[:n_finite] < threshold))  # sorted: a prefix
        _min_size_sweep(ids, n_below, n_vox, shifts, MERGE_ALWAYS, parent, size)  # every edge below merges
        left = ids[n_below:n_finite]
    if min_size > 1:
        _min_size_sweep(left, left.size, n_vox, shifts, int(min_size), parent, size)
    return _relabel(parent).reshape(vol.shape)


def _smooth(volume: np.ndarray, spacing: tuple[float, float, float], sigma: float) -> np.ndarray:
    """Gaussian smoothing with a per-axis sigma in voxels, float32 [Z, Y, X] in C order."""
    vol = np.ascontiguousarray(volume, dtype=np.float32)
    if sigma <= 0:
        return vol
    finest = min(float(s) for s in spacing)
    sigmas = tuple(sigma * finest / float(s) for s in spacing)
    return np.ascontiguousarray(ndimage.gaussian_filter(vol, sigma=sigmas, mode="nearest"), dtype=np.float32)


def _percentile_threshold(sorted_weights: np.ndarray, percentile: float) -> np.float32:
    """The merge threshold of rule ``"percentile"`` from the finite weights sorted ascending [E].

    When every weight is zero the threshold is 1.0, so that zero-weight edges still merge (as they do
    whenever any weight is non-zero). Edges are compared with it in float32.
    """
    first = int(np.searchsorted(sorted_weights, np.float32(0.0), side="right"))
    nonzero = sorted_weights[first:]
    if nonzero.size == 0:
        return np.float32(1.0)
    return np.float32(np.percentile(nonzero, percentile))


@numba.njit(cache=True)
def _build_edges(smooth: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the in-volume forward edges as float32 bit patterns [E] and their edge ids [E]."""
    nz, ny, nx = smooth.shape
    n_vox = nz * ny * nx
    flat = smooth.ravel()
    n_edges = 0
    for d in range(offsets.shape[0]):
        dz, dy, dx = offsets[d, 0], offsets[d, 1], offsets[d, 2]
        n_edges += (nz - dz) * (ny - dy) * (nx - abs(dx))
    keys = np.empty(n_edges, np.uint32)
    ids = np.empty(n_edges, np.int32)
    weight = np.empty(1, np.float32)
    bits = weight.view(np.uint32)
    pos = 0
    for d in range(offsets.shape[0]):
        dz, dy, dx = offsets[d, 0], offsets[d, 1], offsets[d, 2]
        shift = dz * ny * nx + dy * nx + dx
        for z in range(nz - dz):
            for y in range(ny - dy):
                row = (z * ny + y) * nx
                for x in range(max(0, -dx), nx - max(0, dx)):
                    u = row + x
                    weight[0] = abs(flat[u + shift] - flat[u])
                    keys[pos] = bits[0]
                    ids[pos] = d * n_vox + u
                    pos += 1
    return keys, ids


@numba.njit(cache=True)
def _radix_argsort(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable LSD radix sort (3 passes of 11 bits) of uint32 keys < 2**33 [E], carrying ids [E].

    Consumes both inputs (they are reused as scratch); returns the sorted keys and ids.
    """
    n = keys.size
    k_out = np.empty_like(keys)
    i_out = np.empty_like(ids)
    for shift in (0, 11, 22):
        count = np.zeros(2049, np.int64)
        for i in range(n):
            count[((keys[i] >> shift) & 2047) + 1] += 1
        if count[1] == n and shift > 0:  # every key has this digit = 0: the pass would copy verbatim
            continue
        for b in range(2048):
            count[b + 1] += count[b]
        for i in range(n):
            b = (keys[i] >> shift) & 2047
            p = count[b]
            count[b] = p + 1
            k_out[p] = keys[i]
            i_out[p] = ids[i]
        keys, k_out = k_out, keys
        ids, i_out = i_out, ids
    return keys, ids


@numba.njit(cache=True, inline="always")
def _find(parent: np.ndarray, x: int) -> int:
    """Root of ``x`` with path halving."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True, inline="always")
def _union(parent: np.ndarray, size: np.ndarray, a: int, b: int) -> int:
    """Join roots ``a`` and ``b`` by size; return the new root."""
    if size[a] < size[b]:
        a, b = b, a
    parent[b] = a
    size[a] += size[b]
    return a


@numba.njit(cache=True)
def _edge_roots(e: int, n_vox: int, shifts: np.ndarray, parent: np.ndarray) -> tuple[int, int]:
    """The union-find roots of the two voxels joined by edge id ``e`` (``direction * n_vox + voxel``)."""
    d = e // n_vox
    u = e - d * n_vox
    return _find(parent, u), _find(parent, u + shifts[d])


@numba.njit(cache=True)
def _fh_sweep(
    ids: np.ndarray,
    weights: np.ndarray,
    n_edges: int,
    n_vox: int,
    shifts: np.ndarray,
    k: float,
    parent: np.ndarray,
    size: np.ndarray,
) -> int:
    """Felzenszwalb-Huttenlocher merging over the first ``n_edges`` sorted edges (in place).

    Returns:
        The number m of edges rejected between two different components; their ids are moved, in order,
        to ``ids[:m]`` (every other edge is inside a component from then on).
    """
    n_left = 0
    internal = np.zeros(parent.size, np.float32)
    for i in range(n_edges):
        e = ids[i]
        a, b = _edge_roots(e, n_vox, shifts, parent)
        if a == b:
            continue
        w = weights[i]
        if w <= internal[a] + k / size[a] and w <= internal[b] + k / size[b]:
            r = _union(parent, size, a, b)
            internal[r] = w
        else:
            ids[n_left] = e
            n_left += 1
    return n_left


@numba.njit(cache=True)
def _min_size_sweep(
    ids: np.ndarray,
    n_edges: int,
    n_vox: int,
    shifts: np.ndarray,
    min_size: int,
    parent: np.ndarray,
    size: np.ndarray,
) -> None:
    """Merge, cheapest edge first, every pair where either component has fewer than ``min_size`` voxels."""
    for i in range(n_edges):
        a, b = _edge_roots(ids[i], n_vox, shifts, parent)
        if a != b and (size[a] < min_size or size[b] < min_size):
            _union(parent, size, a, b)


@numba.njit(cache=True)
def _relabel(parent: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..R [N] int32 from the union-find forest, numbered by first voxel in C order."""
    n = parent.size
    labels = np.empty(n, np.int32)
    root_id = np.zeros(n, np.int32)
    current = 0
    for v in range(n):
        r = _find(parent, v)
        if root_id[r] == 0:
            current += 1
            root_id[r] = current
        labels[v] = root_id[r]
    return labels
