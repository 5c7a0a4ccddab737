"""Where organs touch each other, and what a model's errors on them are (BENCHMARKS "Training", generator 5).

* Contacts: for each organ of ``--organs``, the share of its 6-connected outer shell (one voxel around the organ)
  that each label fills, over the first ``--cases`` training labels of the dataset.
* With ``--pred FOLDER``: for each case there and each organ, what its missed voxels were predicted as, what its
  false positives really are, how many missed voxels touch the predicted organ, and the Dice with and without
  keeping only the largest connected component of each class (nnU-Net's post-processing).

`.venv/bin/python benchmarks/diag_organ_errors.py -d 900 [--organs aorta,pancreas] [--cases 8]
[--pred results/.../fold_0/validation]`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segvolpipe.evaluation.metrics import class_overlap  # noqa: E402
from segvolpipe.io.dataset import load_dataset_spec  # noqa: E402
from segvolpipe.io.nifti import read_label  # noqa: E402
from segvolpipe.paths import raw_root, resolve_dataset  # noqa: E402


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    return mask if n <= 1 else labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return class_overlap(a, b).dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", "--dataset", default="900")
    parser.add_argument("--organs", default="aorta,pancreas")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--pred", type=Path)
    args = parser.parse_args()
    folder = raw_root() / resolve_dataset(args.dataset, raw_root())
    spec = load_dataset_spec(folder)
    names = {value: name for name, value in spec.labels}
    ids = [dict(spec.labels)[o] for o in args.organs.split(",")]
    labels = sorted((folder / "labelsTr").glob(f"*{spec.file_ending}"))

    def read(path: Path) -> np.ndarray:
        return np.asarray(read_label(path)[0], dtype=np.int64)

    k = max(names) + 1
    for organ in ids:
        counts = np.zeros(k, np.int64)
        for path in labels[: args.cases]:
            label = read(path)
            mask = label == organ
            counts += np.bincount(label[ndimage.binary_dilation(mask) & ~mask], minlength=k)
        shares = ", ".join(f"{names[i]} {c / counts.sum():.3f}" for i, c in enumerate(counts) if c)
        print(f"{names[organ]}: outer shell over {min(args.cases, len(labels))} cases: {shares}")
    if args.pred is None:
        return
    scores: dict[int, list[tuple[float, float]]] = {}
    for pred_path in sorted(args.pred.glob(f"*{spec.file_ending}")):
        case = pred_path.name[: -len(spec.file_ending)]
        pred, ref = read(pred_path), read(folder / "labelsTr" / pred_path.name)
        for value in range(1, k):
            p, r = pred == value, ref == value
            scores.setdefault(value, []).append((dice(p, r), dice(largest_component(p), r)))
            if value not in ids:
                continue
            missed_as = np.bincount(pred[r & ~p], minlength=k)
            false_is = np.bincount(ref[p & ~r], minlength=k)
            touching = int((r & ~p & ndimage.binary_dilation(p)).sum())
            print(f"{case} {names[value]}: Dice {dice(p, r):.3f}, {int(r.sum())} reference / {int(p.sum())} predicted "
                  f"voxels; missed {int(missed_as.sum())} ({touching} touching the prediction), predicted as "
                  + ", ".join(f"{names[i]} {c}" for i, c in enumerate(missed_as) if c)
                  + "; false positives are " + ", ".join(f"{names[i]} {c}" for i, c in enumerate(false_is) if c))
    print("mean Dice as predicted / largest connected component only:")
    for value, rows in scores.items():
        before, after = np.nanmean(np.array(rows), axis=0)
        print(f"  {names[value]}: {before:.3f} / {after:.3f}")
    means = np.nanmean(np.array([np.nanmean(np.array(rows), axis=0) for rows in scores.values()]), axis=0)
    print(f"  foreground mean: {means[0]:.3f} / {means[1]:.3f}")


if __name__ == "__main__":
    main()
