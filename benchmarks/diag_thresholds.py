"""Is a promptable model's Dice held back by its threshold? Mean Dice of saved probabilities at several thresholds.

`segvol predict ... --save-probabilities` writes ``{case}_probabilities.npz`` (one map per target, the input file's
grid) beside each label map; this merges them as prediction does (a voxel takes the target of highest probability
when that passes the threshold, else background) at each ``--thresholds`` value and scores every label of the
reference against it:

`.venv/bin/python benchmarks/diag_thresholds.py --pred <predict output> --ref <labels folder>
[--thresholds 0.2 0.3 0.4 0.5]`
"""

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from segvolpipe.evaluation.metrics import dice_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", type=Path, required=True, help="segvol predict's output folder (--save-probabilities)")
    ap.add_argument("--ref", type=Path, required=True, help="folder of reference label maps {case}.nii.gz")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    args = ap.parse_args()
    files = sorted(args.pred.glob("*_probabilities.npz"))
    if not files:
        raise SystemExit(f"{args.pred}: no *_probabilities.npz (run segvol predict with --save-probabilities)")
    scores: dict[float, list[np.ndarray]] = {t: [] for t in args.thresholds}
    names: list[str] = []
    for f in files:
        case = f.name.removesuffix("_probabilities.npz")
        with np.load(f, allow_pickle=False) as z:
            prob, values, names = z["probabilities"].astype(np.float32), z["values"], [str(n) for n in z["names"]]
        ref = np.asarray(nib.load(args.ref / f"{case}.nii.gz").dataobj).astype(np.int64)
        best, index = prob.max(0), prob.argmax(0)
        for t in args.thresholds:
            label = np.where(best > t, values[index], 0)
            d = dice_scores(label, ref, [int(v) for v in values])
            scores[t].append(np.array([d[int(v)] for v in values], dtype=np.float64))
    print(f"{len(files)} cases; classes: {', '.join(names)}")
    for t in args.thresholds:
        per_class = np.nanmean(np.stack(scores[t]), axis=0)
        print(f"threshold {t:.2f}: mean {np.nanmean(per_class):.3f}  " + " ".join(f"{x:.3f}" for x in per_class))


if __name__ == "__main__":
    main()
