"""What a coarser grid costs by itself: each class's Dice after its labels go down by a factor per axis and back
up (trilinear), against the original labels.

Two ways down:

* ``resample`` (default): the one-hot maps resampled down (trilinear), back up, argmax: what resampling labels to a
  coarser training grid and predicting there costs.
* ``fit``: for each class, the best binary logits on the coarse grid: fitted (Adam, ``--steps``, BCE + soft Dice)
  so that, upsampled trilinearly and thresholded at 0.5, they match the mask: what a model whose logits live on that
  grid and are interpolated up (the promptable decoder's masks) can draw at least (the fit approaches the best from
  below); e.g. ``--factor 1.55 3.04`` is that decoder's output (4× the token grid of 4×8×8 patches on the 3d_lite
  grid) against Dataset900's raw grid.

`.venv/bin/python benchmarks/diag_resolution.py --dataset Dataset900_PhantomCT --cases 6 [--factor Z XY ...]
[--way resample|fit] [--steps 150]`
"""

import argparse

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from segvolpipe.paths import raw_root


def fitted(mask: torch.Tensor, small: list[int], steps: int) -> torch.Tensor:
    """Binary logits on a grid of shape ``small`` whose trilinear upsampling best matches ``mask`` [X, Y, Z]."""
    target = mask[None, None].float()
    init = F.interpolate(target, size=small, mode="trilinear", align_corners=False)
    logits = ((init - 0.5) * 8).requires_grad_()
    optimiser = torch.optim.Adam([logits], lr=0.5)
    for _ in range(steps):
        up = F.interpolate(logits, size=mask.shape, mode="trilinear", align_corners=False)
        prob = torch.sigmoid(up)
        dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(up, target) + dice
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return F.interpolate(logits, size=mask.shape, mode="trilinear", align_corners=False)[0, 0] > 0


ap = argparse.ArgumentParser()
ap.add_argument("--dataset", default="Dataset900_PhantomCT")
ap.add_argument("--cases", type=int, default=6)
ap.add_argument("--factor", type=float, nargs=2, action="append", metavar=("Z", "XY"),
                help="down-sampling factor along z and in-plane (repeatable; default 1.5/1.5, 2/2, 1/2, 2/1.5)")
ap.add_argument("--way", default="resample", choices=("resample", "fit"))
ap.add_argument("--steps", type=int, default=150, help="Adam steps per class and case (--way fit)")
a = ap.parse_args()
torch.manual_seed(0)
files = sorted((raw_root() / a.dataset / "labelsTr").glob("*.nii*"))[: a.cases]
labels = [np.asarray(nib.load(f).dataobj).astype(np.int64) for f in files]
k = int(max(lab.max() for lab in labels)) + 1
print(f"{a.way}: factor (z, in-plane) | Dice per class 1..{k - 1} | mean")
for fz, fxy in a.factor or [(1.5, 1.5), (2, 2), (1, 2), (2, 1.5)]:
    scores: dict[int, list[float]] = {c: [] for c in range(1, k)}
    for lab in labels:  # file axes x, y, z
        small = [max(1, round(s / f)) for s, f in zip(lab.shape, (fxy, fxy, fz), strict=True)]
        if a.way == "resample":
            onehot = F.one_hot(torch.from_numpy(lab), k).permute(3, 0, 1, 2)[None].float()
            down = F.interpolate(onehot, size=small, mode="trilinear", align_corners=False)
            back = F.interpolate(down, size=lab.shape, mode="trilinear", align_corners=False).argmax(1)[0].numpy()
        for c in scores:
            ref = lab == c
            if not ref.any():
                continue
            got = back == c if a.way == "resample" else fitted(torch.from_numpy(ref), small, a.steps).numpy()
            scores[c].append(2 * (ref & got).sum() / (ref.sum() + got.sum()))
    means = [float(np.mean(v)) for v in scores.values() if v]
    print(f"{fz} × {fxy} | " + " ".join(f"{m:.3f}" for m in means) + f" | {np.mean(means):.3f}")
