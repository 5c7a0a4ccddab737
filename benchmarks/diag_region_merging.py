"""Diagnostic behind BENCHMARKS.md "Pseudo-masks": a statistical region-merging rule tried in place of the fh /
percentile rules (not part of the product).

The same sorted-edge union–find as ``segvolpipe.pseudomask.graph`` (edges ordered by the smoothed-image difference),
but two regions merge when their mean intensities differ by less than λ·σ̂·√(1/n₁ + 1/n₂) (a two-sample test in the
spirit of Nock & Nielsen's statistical region merging), σ̂ the noise estimated from neighbour differences inside the
body (``segvolpipe.pseudomask.denoise.noise_sigma``, in-plane axes; the BENCHMARKS figures were taken with x alone);
then the usual min-size merge and SegVol's cleaning. Prints, per settings object, the mean best-match Dice of
liver, spleen and kidneys (label values 1–4) after and before cleaning over the dataset's cases; ``{"rule": "fh"}`` /
``{"rule": "percentile"}`` run the product's rules through the same harness, on the Gaussian-blurred normalised
image with k in its units (the graph as it was before the total-variation step; not the stage's defaults).

`.venv/bin/python benchmarks/diag_region_merging.py Dataset900_PhantomCT '[{"lam": 2}, {"lam": 5, "means_on": "smooth"}, {"rule": "fh"}]'`
"""
import json
import sys
import time

import numba
import numpy as np

from segvolpipe.paths import preprocessed_root
from segvolpipe.pseudomask import graph as G
from segvolpipe.pseudomask.case import PseudomaskSettings
from segvolpipe.pseudomask.clean import clean_regions
from segvolpipe.pseudomask.denoise import noise_sigma
from segvolpipe.pseudomask.metrics import best_match_dice, body_mask

CLASSES = (1, 2, 3, 4)


@numba.njit(cache=True)
def _merge_sweep(ids, n_edges, n_vox, shifts, values, bound2, parent, size):
    total = values.astype(np.float64).copy()
    n_left = 0
    for i in range(n_edges):
        e = ids[i]
        a, b = G._edge_roots(e, n_vox, shifts, parent)
        if a == b:
            continue
        na, nb = size[a], size[b]
        d = total[a] / na - total[b] / nb
        if d * d <= bound2 * (1.0 / na + 1.0 / nb):
            r = G._union(parent, size, a, b)
            total[r] = total[a] + total[b]
        else:
            ids[n_left] = e
            n_left += 1
    return n_left


def segment_merging(volume, spacing, lam, sigma, min_size, means_on="raw"):
    offsets = G.FACE_OFFSETS
    vol = np.ascontiguousarray(volume, np.float32)
    smooth = G._smooth(vol, spacing, sigma)
    keys, ids = G._build_edges(smooth, np.asarray(offsets, np.int64))
    keys, ids = G._radix_argsort(keys, ids)
    n_finite = int(np.searchsorted(keys, np.uint32(0x7F800000)))
    shifts = np.asarray([dz * vol.shape[1] * vol.shape[2] + dy * vol.shape[2] + dx for dz, dy, dx in offsets])
    parent, size = np.arange(vol.size, dtype=np.int32), np.ones(vol.size, np.int32)
    source = vol if means_on == "raw" else smooth
    bound2 = float((lam * noise_sigma(source, spacing)) ** 2)
    n_left = _merge_sweep(ids, n_finite, vol.size, shifts, source.ravel(), bound2, parent, size)
    G._min_size_sweep(ids[:n_left], n_left, vol.size, shifts, int(min_size), parent, size)
    return G._relabel(parent).reshape(vol.shape)


def main() -> None:
    dataset, grid = sys.argv[1], json.loads(sys.argv[2])
    folder = preprocessed_root() / dataset / "3d_lite"
    cases = sorted(p.name[:-8] for p in folder.glob("*_seg.npy"))
    for params in grid:
        start, after, before = time.time(), [], []
        for case in cases:
            image = np.load(folder / f"{case}.npy", mmap_mode="r")[0].astype(np.float32)
            seg = np.load(folder / f"{case}_seg.npy")
            spacing = tuple(json.loads((folder / f"{case}.json").read_text())["target_spacing"])
            s = PseudomaskSettings(rule=params.get("rule", "fh"), k=params.get("k", 1.0), sigma=params.get("sigma", 0.8))
            min_size = s.min_size_for(image.size)
            if "rule" in params:
                raw = G.segment_graph(image, spacing, s.rule, s.k, s.sigma, min_size)
            else:
                raw = segment_merging(image, spacing, params.get("lam", 3.0), s.sigma, min_size,
                                      params.get("means_on", "raw"))
            body = body_mask(image)
            cleaned = clean_regions(raw, body, s.min_voxels_for(body), True)
            a, b = best_match_dice(cleaned, seg, CLASSES), best_match_dice(raw, seg, CLASSES)
            after.append([a.get(c, np.nan) for c in CLASSES])
            before.append([b.get(c, np.nan) for c in CLASSES])
        after_a, before_a = np.array(after), np.array(before)
        print(json.dumps(params), "after cleaning", np.round(np.nanmean(after_a, 0), 3).tolist(),
              f"mean {np.nanmean(after_a):.3f}; before", np.round(np.nanmean(before_a, 0), 3).tolist(),
              f"mean {np.nanmean(before_a):.3f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
