"""Time to generate one phantom case (the issue's target: a 128×128×64 case in ≤ 1 s).

Measures ``make_phantom_case`` (anatomy, contrast, noise; no file writing) and, separately, writing the
image and label as ``.nii.gz``, for CT and both MRI contrasts, in one process. Prints a Markdown table
with medians over ``--cases`` cases.

    .venv/bin/python benchmarks/bench_phantoms.py [--cases 10] [--size 64,128,128]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from segvolpipe.io.nifti import write_label, write_volume
from segvolpipe.phantoms import PhantomOptions, make_phantom_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--size", default="64,128,128", help="canonical Z,Y,X")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for modality, contrast in (("ct", "t1"), ("mri", "t1"), ("mri", "t2")):
            options = PhantomOptions(modality=modality, mri_contrast=contrast, size=size)
            make_phantom_case(0, options)  # warm-up (imports, caches)
            gen, write = [], []
            for i in range(args.cases):
                t0 = time.perf_counter()
                image, label, geometry = make_phantom_case(i, options)
                gen.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                dtype = np.int16 if modality == "ct" else np.float32
                write_volume(Path(tmp) / "img_0000.nii.gz", image, geometry, dtype)
                write_label(Path(tmp) / "lab.nii.gz", label, geometry)
                write.append(time.perf_counter() - t0)
            rows.append((f"{modality} {contrast if modality == 'mri' else ''}".strip(), statistics.median(gen),
                         max(gen), statistics.median(write)))
    print(f"| phantom ({'×'.join(map(str, size))} z×y×x) | generate, median (s) | generate, max (s) | write .nii.gz, median (s) |")
    print("|---|---|---|---|")
    for name, med, worst, wmed in rows:
        print(f"| {name} | {med:.3f} | {worst:.3f} | {wmed:.3f} |")


if __name__ == "__main__":
    main()
