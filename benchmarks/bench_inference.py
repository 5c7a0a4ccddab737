"""Inference: zoom-out-zoom-in vs sliding window on large volumes, start-up overhead, peak memory on a big CT.

* **zoom vs sliding** — the dataset's held-out test cases (``imagesTs``/``labelsTs``), resampled to a large CT grid
  (default 160×384×384 z×y×x at 2.5×0.8×0.8 mm) and centred in a field of view of air (−1000 HU), as a
  scanner's reconstruction circle surrounds a body. One process loads the same trained model twice (one
  :class:`~segvolpipe.inference.predictor.Predictor` per mode) and predicts every case with both, alternating
  which goes first; wall time per case (preprocessing, prediction, export — everything but reading the file)
  and Dice per class against the resampled reference.
* **start-up** — a fresh process importing the predictor and loading the model (median of 3).
* **memory** — ``segvol predict`` in a fresh process on one large CT (default 300×512×512 at 1.5×0.8×0.8 mm),
  peak RSS/PSS of its process tree sampled from ``/proc``.

    .venv/bin/python benchmarks/bench_inference.py -m results/Dataset900_PhantomCT/segvol__3d_lite [--cases 4]
        [--large 160,384,384] [--large-spacing 2.5,0.8,0.8] [--memory 300,512,512] [--memory-spacing 1.5,0.8,0.8]
        [--device cpu] [--skip-memory] [--out benchmarks/_work/bench_inference.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import git_revision, machine_info, markdown_table, run_measured  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "inference"


def _triple(text: str, kind=float) -> tuple:
    values = tuple(kind(v) for v in text.replace("x", ",").split(","))
    if len(values) != 3:
        raise SystemExit(f"expected three values, got {text!r}")
    return values


def embed(image: np.ndarray, label: np.ndarray, spacing, target_spacing, shape) -> tuple[np.ndarray, np.ndarray]:
    """Resample a canonical case to ``target_spacing`` and centre it in an air-filled volume of ``shape``."""
    from segvolpipe.preprocessing.resampling import (
        anisotropic_axis,
        resample_image,
        resample_label,
        resampled_shape,
    )

    new = resampled_shape(image.shape, spacing, target_spacing)
    axis = anisotropic_axis(spacing, target_spacing)
    img = resample_image(image[None].astype(np.float32), new, axis, 3)[0]
    lab = resample_label(label.astype(np.int16), new, axis)
    canvas = np.full(shape, -1000.0, np.float32)
    out_label = np.zeros(shape, np.int16)
    src, dst = [], []
    for n, m in zip(new, shape, strict=True):
        if n <= m:
            off = (m - n) // 2
            src.append(slice(0, n))
            dst.append(slice(off, off + n))
        else:
            off = (n - m) // 2
            src.append(slice(off, off + m))
            dst.append(slice(0, m))
    canvas[tuple(dst)] = img[tuple(src)]
    out_label[tuple(dst)] = lab[tuple(src)]
    return canvas, out_label


def make_volumes(raw: Path, cases: list[str], shape, spacing, folder: Path) -> list[str]:
    from segvolpipe.io.nifti import Geometry, read_image, read_label, write_label, write_volume

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for case in cases:
        image_path, label_path = folder / f"{case}_0000.nii.gz", folder / "labels" / f"{case}.nii.gz"
        made.append(case)
        if image_path.exists() and label_path.exists():
            continue
        image, geometry = read_image([raw / "imagesTs" / f"{case}_0000.nii.gz"])
        label, _ = read_label(raw / "labelsTs" / f"{case}.nii.gz")
        big, big_label = embed(image[0], label, geometry.spacing, spacing, shape)
        geom = Geometry.from_canonical_spec(shape, spacing, ("L", "P", "S"))
        label_path.parent.mkdir(exist_ok=True)
        write_volume(image_path, big, geom, np.int16)
        write_label(label_path, big_label, geom)
    return made


def compare_modes(model: Path, folder: Path, cases: list[str], device: str) -> dict:
    from segvolpipe.evaluation.metrics import dice_scores
    from segvolpipe.inference.predictor import Predictor
    from segvolpipe.io.nifti import read_image, read_label

    predictors = {mode: Predictor(model, mode=mode, device=device) for mode in ("sliding", "zoom")}
    labels = predictors["zoom"].labels
    rows = []
    for i, case in enumerate(cases):
        image, geometry = read_image([folder / f"{case}_0000.nii.gz"])
        reference, _ = read_label(folder / "labels" / f"{case}.nii.gz")
        order = ("zoom", "sliding") if i % 2 == 0 else ("sliding", "zoom")
        row = {"case": case, "shape": list(image.shape[1:])}
        for mode in order:
            p = predictors[mode]
            start = time.perf_counter()
            result = p.predict(image, geometry, p.targets())
            seconds = time.perf_counter() - start
            dice = dice_scores(result.label, reference, list(labels))
            present = [d for d in dice.values() if not np.isnan(d)]
            row[mode] = {"seconds": seconds, "timings": result.seconds, "dice": {labels[v]: d for v, d in dice.items()},
                         "mean_dice": float(np.mean(present)) if present else float("nan")}
            if mode == "zoom":
                row[mode]["windows"] = {n: runs[0]["windows"] for n, runs in result.zoom.items()}
            print(f"{case} {mode}: {seconds:.1f} s, mean Dice {row[mode]['mean_dice']:.3f}", flush=True)
        rows.append(row)
    return {"cases": rows, "labels": list(labels.values())}


def startup(model: Path, device: str, repeats: int = 3) -> list[float]:
    code = ("import time; t = time.perf_counter(); from segvolpipe.inference.predictor import Predictor; "
            f"Predictor(__import__('pathlib').Path({str(model)!r}), device={device!r}); "
            "print(time.perf_counter() - t)")
    out = []
    for _ in range(repeats):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        out.append(float(res.stdout.strip().splitlines()[-1]))
    return out


def memory(model: Path, folder: Path, device: str) -> dict:
    out = WORK / "memory_out"
    cmd = [str(Path(sys.executable).parent / "segvol"), "predict", "-i", str(folder), "-o", str(out), "-m", str(model),
           "--device", device, "--no-progress", "--overwrite"]
    run = run_measured(cmd, None, WORK / "memory.log", cwd=ROOT)
    record = json.loads((out / "predictions.json").read_text()) if (out / "predictions.json").exists() else {}
    case = next(iter(record.get("cases", {}).values()), {})
    return {"returncode": run.returncode, "wall_s": run.wall_s, "peak_rss_mib": run.peak_rss_mib,
            "peak_pss_mib": run.peak_pss_mib, "max_single_rss_mib": run.max_single_rss_mib,
            "case_seconds": case.get("seconds"), "timings": case.get("timings"), "mode": case.get("mode"),
            "command": " ".join(cmd)}


def render(results: dict) -> str:
    cmp = results["compare"]
    lines = [f"Large volumes: {results['large']} (z×y×x) at {results['large_spacing']} mm, "
             f"{len(cmp['cases'])} held-out cases, device {results['device']}.", ""]
    rows = []
    for r in cmp["cases"]:
        s, z = r["sliding"], r["zoom"]
        rows.append([r["case"], f"{s['seconds']:.1f}", f"{z['seconds']:.1f}", f"{z['seconds'] / s['seconds']:.2f}",
                     f"{s['mean_dice']:.3f}", f"{z['mean_dice']:.3f}", f"{z['mean_dice'] - s['mean_dice']:+.3f}"])
    ts = [r["sliding"]["seconds"] for r in cmp["cases"]]
    tz = [r["zoom"]["seconds"] for r in cmp["cases"]]
    ds = [r["sliding"]["mean_dice"] for r in cmp["cases"]]
    dz = [r["zoom"]["mean_dice"] for r in cmp["cases"]]
    rows.append(["**median**", f"{statistics.median(ts):.1f}", f"{statistics.median(tz):.1f}",
                 f"{statistics.median([b / a for a, b in zip(ts, tz, strict=True)]):.2f}", f"{statistics.median(ds):.3f}",
                 f"{statistics.median(dz):.3f}", f"{statistics.median([b - a for a, b in zip(ds, dz, strict=True)]):+.3f}"])
    lines.append(markdown_table(["case", "sliding (s)", "zoom (s)", "zoom / sliding", "sliding mean Dice",
                                 "zoom mean Dice", "Δ Dice"], rows))
    per_class = []
    for name in cmp["labels"]:
        s = [r["sliding"]["dice"][name] for r in cmp["cases"] if not np.isnan(r["sliding"]["dice"][name])]
        z = [r["zoom"]["dice"][name] for r in cmp["cases"] if not np.isnan(r["zoom"]["dice"][name])]
        if s or z:
            per_class.append([name, f"{statistics.median(s):.3f}" if s else "—", f"{statistics.median(z):.3f}" if z else "—"])
    lines += ["", markdown_table(["class", "sliding Dice (median)", "zoom Dice (median)"], per_class)]
    st = results.get("startup")
    if st:
        lines += ["", f"Start-up (fresh process: import + load the model): median {statistics.median(st):.2f} s "
                      f"({', '.join(f'{v:.2f}' for v in st)})."]
    mem = results.get("memory")
    if mem:
        lines += ["", f"Memory: `segvol predict` on one {results['memory_shape']} CT at {results['memory_spacing']} mm "
                      f"({mem['mode']}): peak RSS {mem['peak_rss_mib']:.0f} MiB (tree), PSS {mem['peak_pss_mib']:.0f} MiB, "
                      f"largest process {mem['max_single_rss_mib']:.0f} MiB; wall {mem['wall_s']:.1f} s, of which the case "
                      f"{mem['case_seconds']} s ({mem['timings']}); rc {mem['returncode']}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", type=Path, default=ROOT / "results/Dataset900_PhantomCT/segvol__3d_lite")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--large", default="160,384,384")
    parser.add_argument("--large-spacing", default="2.5,0.8,0.8")
    parser.add_argument("--memory", default="300,512,512")
    parser.add_argument("--memory-spacing", default="1.5,0.8,0.8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/_work/bench_inference.json")
    args = parser.parse_args()

    from segvolpipe.paths import raw_root

    dataset = args.model.parent.name
    raw = raw_root() / dataset
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))[: args.cases]
    if not cases:
        raise SystemExit(f"no test cases in {raw / 'imagesTs'}")
    large, large_spacing = _triple(args.large, int), _triple(args.large_spacing)
    results = {"machine": machine_info(), "revision": git_revision(ROOT), "device": args.device,
               "model": str(args.model), "large": "×".join(map(str, large)), "large_spacing": "×".join(map(str, large_spacing))}
    folder = WORK / f"large_{'x'.join(map(str, large))}"
    made = make_volumes(raw, cases, large, large_spacing, folder)
    results["compare"] = compare_modes(args.model, folder, made, args.device)
    results["startup"] = startup(args.model, args.device)
    if not args.skip_memory:
        mshape, mspacing = _triple(args.memory, int), _triple(args.memory_spacing)
        mfolder = WORK / f"memory_{'x'.join(map(str, mshape))}"
        make_volumes(raw, cases[:1], mshape, mspacing, mfolder)
        results["memory_shape"], results["memory_spacing"] = "×".join(map(str, mshape)), "×".join(map(str, mspacing))
        results["memory"] = memory(args.model, mfolder, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    text = render(results)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
