"""A raw dataset from a real MRI: nilearn's MNI152 1 mm T1 template with grey/white matter labels, stored the way
real files arrive — mixed orientations, data types, spacings and `.nii` / `.nii.gz` — to run every stage on a real
volume rather than a phantom.

Each case is the template under a small random affine (rotation ±8°, scale 0.92–1.08, shift ±6 mm), a smooth
multiplicative bias (±15 %) and Rician-like noise; labels are grey matter (1) and white matter (2) where nilearn's
probability maps exceed 0.5 (the larger wins), carried by nearest neighbour. Storage cycles through RAS, LPS, LAS and
a sagittal-first order; data types through int16, uint8 and float32; every third case is resampled to 1×1×3 mm.
Dataset files are `.nii` (the dataset's ``file_ending``); the test images also go, as `.nii.gz`, to a folder
``imagesTs_gz`` beside them (outside the dataset contract: input for ``segvol predict``).
nilearn ships the template inside its package (nothing is downloaded); it is needed only by this script:
``.venv/bin/pip install -c constraints.txt nilearn``.

`SEGVOL_RAW=<raw root> .venv/bin/python benchmarks/make_mni_dataset.py --id 950 --train 8 --test 2`
"""
from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
from scipy import ndimage

from segvolpipe.io.atomic import write_json
from segvolpipe.paths import raw_root

ORIENTATIONS = (("R", "A", "S"), ("L", "P", "S"), ("L", "A", "S"), ("A", "S", "R"))
DTYPES = (np.int16, np.uint8, np.float32)


def _template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), np.float32)
    label = np.zeros(gm.shape, np.uint8)
    label[(gm > 0.5) & (gm >= wm)] = 1
    label[(wm > 0.5) & (wm > gm)] = 2
    return np.asarray(t1.get_fdata(), np.float32), label, t1.affine


def _case(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = np.cos(a), np.sin(a)
        r = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    matrix = rot * rng.uniform(0.92, 1.08)
    centre = (np.asarray(image.shape) - 1) / 2
    offset = centre - matrix @ centre + rng.uniform(-6, 6, 3)
    moved = ndimage.affine_transform(image, matrix, offset, order=1, mode="constant", cval=0.0)
    moved_label = ndimage.affine_transform(label, matrix, offset, order=0, mode="constant", cval=0)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in image.shape], indexing="ij")
    bias = 1 + 0.15 * np.tanh(rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * zz)
    signal = moved * bias * rng.uniform(0.7, 1.4)
    sigma = 0.03 * float(np.percentile(signal[signal > 0], 95))
    noisy = np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))
    return noisy.astype(np.float32), moved_label


def _store(image: np.ndarray, label: np.ndarray, affine: np.ndarray, index: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    if index % 3 == 2:  # 1×1×3 mm: every third slice along the last voxel axis, thick-slice averaged
        image = ndimage.uniform_filter1d(image, 3, axis=2)[:, :, 1::3]
        label = label[:, :, 1::3]
        affine = affine.copy()
        affine[:3, 2] *= 3
        affine[:3, 3] += affine[:3, 2] / 3
    dtype = DTYPES[index % len(DTYPES)]
    if dtype is not np.float32:
        image = np.clip(np.rint(image * (250.0 / max(float(image.max()), 1e-6))), 0, 250)
    img = nib.Nifti1Image(image.astype(dtype), affine)
    lab = nib.Nifti1Image(label.astype(np.uint8), affine)
    target = nib.orientations.axcodes2ornt(ORIENTATIONS[index % len(ORIENTATIONS)])
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), target)
    return img.as_reoriented(transform), lab.as_reoriented(transform)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", type=int, default=950)
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--test", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = raw_root() / f"Dataset{args.id:03d}_MNIBrain"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesTs_gz"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    image, label, affine = _template()
    for i in range(args.train + args.test):
        rng = np.random.default_rng([args.seed, i])
        img, lab = _store(*_case(image, label, rng), affine, i)
        split = "Tr" if i < args.train else "Ts"
        name = f"mni_{i:03d}"
        nib.save(img, folder / f"images{split}" / f"{name}_0000.nii")
        nib.save(lab, folder / f"labels{split}" / f"{name}.nii")
        if split == "Ts":
            nib.save(img, folder / "imagesTs_gz" / f"{name}_0000.nii.gz")
        print(name, split, nib.aff2axcodes(img.affine), img.get_data_dtype(), img.shape, img.header.get_zooms())
    write_json(folder / "dataset.json", {
        "name": "MNIBrain", "description": "nilearn's MNI152 1 mm T1 template under random affines, bias and noise",
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "grey_matter": 1, "white_matter": 2},
        "numTraining": args.train, "file_ending": ".nii"})
    print(json.dumps({"dataset": str(folder)}))


if __name__ == "__main__":
    main()
