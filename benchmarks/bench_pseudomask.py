"""Pseudo-masks: ours (3D graph, both rules, both denoisers, all steps) vs skimage's 2D Felzenszwalb per slice.

For each volume size, one CT phantom case (normalised with the ``ct`` scheme from its own foreground
statistics, as ``plan-preprocess`` does with the dataset's) is segmented by

* ``segvolpipe percentile tv`` — the stage's defaults: ``segment_case`` + ``clean_regions`` (all steps but file
  I/O: noise estimate, total-variation denoising, graph, sort, union-find, min-size merge, cleaning),
* ``segvolpipe fh tv``       — the same with Felzenszwalb–Huttenlocher's adaptive rule,
* ``segvolpipe fh gaussian`` / ``segvolpipe percentile gaussian`` — SegVol's Gaussian σ 0.8 instead of TV,
* ``skimage 2D slices``      — ``skimage.segmentation.felzenszwalb`` on every axial slice (ids made unique),
  then the same ``clean_regions``,

each in a fresh single-threaded process (time and peak RSS of that process, numba compiled beforehand),
and scored by best-match Dice per organ (``segvolpipe.pseudomask.metrics.best_match_dice``) after
cleaning, and before cleaning (raw regions), both before any ground-truth merge.

    .venv/bin/python benchmarks/bench_pseudomask.py [--sizes 64,128,128 128,256,256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ORGANS = ("liver", "spleen", "left_kidney", "right_kidney")


def _case(size: tuple[int, int, int]):
    import numpy as np

    from segvolpipe.phantoms import ORGANS as ALL
    from segvolpipe.phantoms import PhantomOptions, make_phantom_case
    from segvolpipe.preprocessing.normalization import ChannelNorm, normalize

    image, label, geometry = make_phantom_case(0, PhantomOptions(size=size, seed=3))
    fg = image[label > 0]
    lo, hi = np.percentile(fg, (0.5, 99.5))
    clipped = np.clip(fg, lo, hi)
    norm = ChannelNorm(0, "CT", "ct", clip_low=float(lo), clip_high=float(hi), mean=float(clipped.mean()), std=float(clipped.std()))
    volume = normalize(image[None], None, (norm,))[0]
    ids = tuple(ALL.index(o) + 1 for o in ORGANS)
    return volume, label, geometry.spacing, ids


def _worker(method: str, size: tuple[int, int, int], settings: dict, queue: mp.Queue) -> None:
    import resource

    import numpy as np

    from segvolpipe.pseudomask.metrics import best_match_dice, body_mask

    volume, label, spacing, ids = _case(size)
    t0 = time.perf_counter()
    if method == "skimage":
        from skimage.segmentation import felzenszwalb

        regions = np.zeros(volume.shape, np.int32)
        offset = 0
        for z in range(volume.shape[0]):
            seg2d = felzenszwalb(volume[z].astype(np.float64), scale=settings["scale"], sigma=0.8, min_size=settings["min_size"])
            regions[z] = seg2d + offset + 1
            offset += int(seg2d.max()) + 1
        raw = regions
        from segvolpipe.pseudomask.case import PseudomaskSettings
        from segvolpipe.pseudomask.clean import clean_regions

        body = body_mask(volume)
        scored = clean_regions(raw, body, PseudomaskSettings().min_voxels_for(body), True)
    else:
        from segvolpipe.pseudomask.case import PseudomaskSettings, segment_case
        from segvolpipe.pseudomask.clean import clean_regions

        s = PseudomaskSettings(**settings)
        raw, _ = segment_case(volume, spacing, s)
        body = body_mask(volume)
        scored = clean_regions(raw, body, s.min_voxels_for(body), s.morphology)
    seconds = time.perf_counter() - t0
    dice = best_match_dice(scored, label, ids)
    dice_raw = best_match_dice(raw, label, ids)
    queue.put({"seconds": seconds, "dice_raw": {o: dice_raw.get(i) for o, i in zip(ORGANS, ids, strict=True)}, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "dice": {o: dice.get(i) for o, i in zip(ORGANS, ids, strict=True)},
               "regions": int(np.unique(scored[scored > 0]).size)})


def _measure(method: str, size, settings: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(method, size, settings, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["64,128,128", "128,256,256"], help="Z,Y,X sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/_work/bench_pseudomask.json")
    args = parser.parse_args()
    os.environ.update(SINGLE_THREAD)
    import numpy as np

    from segvolpipe.pseudomask.graph import segment_graph  # compile numba's cache once, outside the timings

    segment_graph(np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32))
    methods = {
        "segvolpipe percentile tv": ("ours", {"rule": "percentile"}),
        "segvolpipe fh tv": ("ours", {"rule": "fh"}),
        "segvolpipe fh gaussian": ("ours", {"rule": "fh", "denoise": "gaussian"}),
        "segvolpipe percentile gaussian": ("ours", {"rule": "percentile", "denoise": "gaussian"}),
        "skimage 2D slices": ("skimage", {"scale": 2.0, "min_size": 50}),
    }
    rows = []
    for text in args.sizes:
        size = tuple(int(v) for v in text.split(","))
        for name, (method, settings) in methods.items():
            runs = [_measure(method, size, settings) for _ in range(args.repeats)]
            rows.append({"size": text, "method": name, "seconds": statistics.median(r["seconds"] for r in runs),
                         "peak_mib": max(r["peak_mib"] for r in runs), "dice": runs[0]["dice"], "dice_raw": runs[0]["dice_raw"],
                         "regions": runs[0]["regions"]})
            print(f"{text:>12} {name:<31} {rows[-1]['seconds']:7.2f} s {rows[-1]['peak_mib']:7.0f} MiB {rows[-1]['dice']}", file=sys.stderr)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    print("| volume (z×y×x) | method | time, 1 core (s) | peak RSS (MiB) | regions kept | "
          + " | ".join(f"{o} Dice" for o in ORGANS) + " | mean | mean before cleaning |")
    print("|---|---|---|---|---|" + "---|" * (len(ORGANS) + 2))
    for r in rows:
        d = [r["dice"][o] for o in ORGANS]
        cells = " | ".join("–" if v is None else f"{v:.3f}" for v in d)
        mean = statistics.mean(v for v in d if v is not None)
        raw_mean = statistics.mean(v for v in r["dice_raw"].values() if v is not None)
        print(f"| {r['size'].replace(',', '×')} | {r['method']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['regions']} "
              f"| {cells} | {mean:.3f} | {raw_mean:.3f} |")


if __name__ == "__main__":
    main()
