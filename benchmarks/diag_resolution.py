"""What a coarser grid costs by itself: each class's Dice after resampling the labels down by a factor per axis and
back (one-hot, trilinear, argmax) against the original labels.

`.venv/bin/python benchmarks/diag_resolution.py --dataset Dataset900_PhantomCT --cases 6`
"""

import argparse

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from segvolpipe.paths import raw_root

ap = argparse.ArgumentParser()
ap.add_argument("--dataset", default="Dataset900_PhantomCT")
ap.add_argument("--cases", type=int, default=6)
a = ap.parse_args()
files = sorted((raw_root() / a.dataset / "labelsTr").glob("*.nii*"))[: a.cases]
labels = [np.asarray(nib.load(f).dataobj).astype(np.int64) for f in files]
k = int(max(lab.max() for lab in labels)) + 1
print("factor (z, in-plane) | Dice per class 1..K | mean")
for fz, fxy in [(1.5, 1.5), (2, 2), (1, 2), (2, 1.5)]:
    scores: dict[int, list[float]] = {c: [] for c in range(1, k)}
    for lab in labels:  # file axes x, y, z
        onehot = F.one_hot(torch.from_numpy(lab), k).permute(3, 0, 1, 2)[None].float()
        small = [max(1, round(s / f)) for s, f in zip(lab.shape, (fxy, fxy, fz), strict=True)]
        down = F.interpolate(onehot, size=small, mode="trilinear", align_corners=False)
        back = F.interpolate(down, size=lab.shape, mode="trilinear", align_corners=False).argmax(1)[0].numpy()
        for c in scores:
            ref, got = lab == c, back == c
            if ref.any():
                scores[c].append(2 * (ref & got).sum() / (ref.sum() + got.sum()))
    means = [float(np.mean(v)) for v in scores.values() if v]
    print(f"{fz} × {fxy} | " + " ".join(f"{m:.3f}" for m in means) + f" | {np.mean(means):.3f}")
