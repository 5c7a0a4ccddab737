"""Pseudo-mask settings sweep on a preprocessed dataset: mean best-match Dice (liver, spleen, kidneys = label values
1–4) after cleaning, and before, over its cases, for each settings object given as JSON. ``scale`` is a working-grid
factor (``working_grid`` = the case's shape × scale). ``{"oracle": true}`` replaces the graph regions with the ground
truth itself (each class one region, the background another): the ceiling that the cleaning alone leaves (other
keys still set the cleaning, e.g. ``{"oracle": true, "min_fraction": 1e-5}``). Two processes.

`.venv/bin/python benchmarks/diag_pseudomask_sweep.py Dataset901_PhantomLR '[{}, {"min_size": 500}, {"rule": "percentile"}, {"scale": 2}]'`
"""
import json
import sys
import time
from multiprocessing import Pool

import numpy as np

from segvolpipe.paths import preprocessed_root
from segvolpipe.pseudomask.case import PseudomaskSettings, segment_case
from segvolpipe.pseudomask.clean import clean_regions
from segvolpipe.pseudomask.metrics import best_match_dice, body_mask

CLASSES = (1, 2, 3, 4)


def run(job: tuple[str, str, dict]) -> tuple[list[float], list[float]]:
    folder, case, settings = job
    image = np.load(f"{folder}/{case}.npy", mmap_mode="r")[0].astype(np.float32)
    seg = np.load(f"{folder}/{case}_seg.npy")
    spacing = tuple(json.load(open(f"{folder}/{case}.json"))["target_spacing"])
    settings = dict(settings)
    factor = settings.pop("scale", None)
    oracle = settings.pop("oracle", False)
    if factor:
        settings["working_grid"] = tuple(int(round(n * factor)) for n in image.shape)
    s = PseudomaskSettings(**settings)
    raw = (seg.astype(np.int32) + 1) if oracle else segment_case(image, spacing, s)[0]
    body = body_mask(image)
    cleaned = clean_regions(raw, body, s.min_voxels_for(body), s.morphology)
    if oracle:  # region c + 1 is class c; the background's region becomes "no region"
        cleaned, raw = np.where(cleaned > 0, cleaned - 1, cleaned), raw - 1
    after, before = best_match_dice(cleaned, seg, CLASSES), best_match_dice(raw, seg, CLASSES)
    return [after.get(c, np.nan) for c in CLASSES], [before.get(c, np.nan) for c in CLASSES]


if __name__ == "__main__":
    dataset, grid = sys.argv[1], json.loads(sys.argv[2])
    configuration = sys.argv[3] if len(sys.argv) > 3 else "3d_lite"
    folder = preprocessed_root() / dataset / configuration
    cases = sorted(p.name[:-4] for p in folder.glob("*.npy") if not p.name.endswith("_seg.npy"))
    with Pool(2) as pool:
        for settings in grid:
            start = time.time()
            res = pool.map(run, [(str(folder), c, settings) for c in cases])
            after = np.array([r[0] for r in res])
            before = np.array([r[1] for r in res])
            print(json.dumps(settings), "per class", np.round(np.nanmean(after, 0), 3).tolist(),
                  f"mean {np.nanmean(after):.3f} (before cleaning {np.nanmean(before):.3f}) {time.time() - start:.0f} s",
                  flush=True)
