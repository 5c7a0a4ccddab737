"""Issue 8's figures: a universal model over two CT phantom datasets with different label sets against a model per
dataset, and CT→MRI transfer (zero-shot, full fine-tuning, LoRA, prior with MoA) with the CT Dice before and after,
trainable parameters, and box-jitter robustness.

Everything lives under ``benchmarks/_work/universal/`` (its own raw / preprocessed / results roots). Stages that are
done are skipped (they are idempotent), so a rerun only scores again. Every run is fold 0 with a time budget; scores
are on each dataset's held-out test cases (``imagesTs``/``labelsTs``), predicted in the raw files' geometry with the
plans' mode (zoom-out-zoom-in), by the Python API so that any model can be applied to any dataset's preprocessing.

    .venv/bin/python benchmarks/bench_universal.py --budget 300          # ~40 min on 2 cores
    .venv/bin/python benchmarks/bench_universal.py --render              # the tables again from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path("benchmarks/_work/universal")
A, B, M = "911", "912", "913"
DATASETS = {
    A: ["--labels", "liver,spleen,left_kidney,right_kidney", "--seed", "11", "--name", "PhantomCTa"],
    B: ["--labels", "liver,stomach,aorta,left_kidney,right_kidney", "--seed", "12", "--name", "PhantomCTb"],
    M: ["--modality", "mri", "--labels", "liver,spleen,left_kidney,right_kidney", "--seed", "13", "--name",
        "PhantomMRI"],
}
JITTERS = (0, 1, 5, 10)


def segvol(*args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "segvol"), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env=os.environ)


def name_of(dataset_id: str) -> str:
    from segvolpipe.paths import raw_root, resolve_dataset

    return resolve_dataset(dataset_id, raw_root())


def prepare() -> None:
    from segvolpipe.paths import raw_root

    for d, extra in DATASETS.items():
        if not any(p.name.startswith(f"Dataset{d}_") for p in raw_root().glob("*")):
            segvol("make-phantoms", "-d", d, "--cases", "16", "--test-cases", "4", *extra)
        segvol("plan-preprocess", "-d", d, "--np", "2", "--no-progress")
        segvol("pseudomask", "-d", d, "--np", "2", "--no-progress")


def train(args: list[str], budget: float, folder: Path) -> dict:
    """Train (skipped when done with these settings); the run's training time and epochs from its log."""
    segvol("train", *args, "--time-budget", f"{budget:.0f}", "--no-progress")
    log = [json.loads(x) for x in (folder / "fold_0" / "training_log.jsonl").read_text().splitlines()]
    epochs = [x for x in log if "epoch_s" in x]
    return {"train_s": round(sum(x["epoch_s"] for x in epochs), 1), "epochs": len(epochs)}


def fold_model(folder: Path):
    import torch

    from segvolpipe.inference.model_folder import load_fold_models
    from segvolpipe.models.registry import count_parameters

    spec, models = load_fold_models(folder, ["0"], "final", torch.device("cpu"))
    counts = count_parameters(models[0].model)
    return spec, models[0].model, counts


def score(model, spec, dataset: str, prompt: str = "text", jitter: int = 0) -> dict[str, float]:
    """Mean Dice per class of ``model`` on ``dataset``'s test cases, preprocessed as that dataset (its modality
    drives the prior's gate). ``jitter``: box+text prompts whose boxes are moved by ``jitter`` voxels along a random
    direction per class and case (each corner the same shift; every component in −j..j, one of them ±j; clipped
    to the image)."""
    import torch

    from segvolpipe.evaluation.metrics import dice_scores
    from segvolpipe.inference.predictor import Predictor
    from segvolpipe.inference.prompts import reference_targets
    from segvolpipe.io.dataset import discover_cases, load_dataset_spec
    from segvolpipe.io.nifti import read_image, read_label
    from segvolpipe.paths import preprocessed_root, raw_root
    from segvolpipe.planning.plans import load_plans

    name = name_of(dataset)
    plans = load_plans(preprocessed_root() / name / "plans.json")
    predictor = Predictor.for_model(model, spec, plans, torch.device("cpu"))
    cases, _, _ = discover_cases(raw_root() / name, load_dataset_spec(raw_root() / name), "Ts", require_labels=True)
    per_class: dict[str, list[float]] = {n: [] for n in predictor.labels.values()}
    for i, case in enumerate(cases):
        image, geometry = read_image(case.images)
        reference, _ = read_label(case.label)
        if prompt == "text":
            targets = predictor.targets()
        else:
            targets = reference_targets(predictor.labels, reference, geometry.canonical_affine, "box+text")
            if jitter:
                targets = [_shift(t, jitter, geometry, np.random.default_rng([i, t.value, jitter])) for t in targets]
        label = predictor.predict(image, geometry, targets, str(case.images[0])).label
        for v, d in dice_scores(label, reference, list(predictor.labels)).items():
            if not np.isnan(d):
                per_class[predictor.labels[v]].append(float(d))
    means = {n: float(np.mean(x)) for n, x in per_class.items() if x}
    means["mean"] = float(np.mean(list(means.values())))
    return means


def _shift(target, jitter: int, geometry, rng):
    """``target``'s box moved by ``jitter`` voxels of the canonical grid (clipped to the image)."""
    from dataclasses import replace

    step = rng.integers(-jitter, jitter + 1, 3)
    step[int(rng.integers(3))] = jitter * (1 if rng.random() < 0.5 else -1)
    affine = np.asarray(geometry.canonical_affine, dtype=np.float64)
    corners = np.c_[np.asarray(target.user.box, dtype=np.float64).reshape(2, 3), np.ones(2)]
    voxels = (corners @ np.linalg.inv(affine).T)[:, :3] + step
    voxels = np.clip(voxels, 0, np.asarray(geometry.canonical_shape) - 1)
    world = np.c_[voxels, np.ones(2)] @ affine.T
    return replace(target, user=replace(target.user, box=tuple(float(v) for v in world[:, :3].ravel())))


def checkpoint(r: dict) -> None:
    """Write what is measured so far (a crash in a later step keeps it)."""
    path = ROOT / "bench_universal.partial.json"
    path.write_text(json.dumps(r, indent=1))


def entry(folder: Path, datasets: dict[str, str], prompts=("text", "box+text")) -> dict:
    spec, model, counts = fold_model(folder)
    out = {"trainable": counts.trainable, "total": counts.total}
    for key, d in datasets.items():
        out[key] = {p: score(model, spec, d, p) for p in prompts}
    return out


def run(budget: float, only_prepare: bool = False) -> dict:
    from segvolpipe.paths import results_root

    prepare()
    if only_prepare:
        return {}
    partial = ROOT / "bench_universal.partial.json"
    r: dict = {"budget_s": budget, "universal": {}, "transfer": {}, "jitter": {}, "seconds": {}}
    if partial.is_file() and json.loads(partial.read_text()).get("budget_s") == budget:
        r = json.loads(partial.read_text())  # a rerun after a crash scores only what is missing
    res = results_root()
    na, nb, nm = name_of(A), name_of(B), name_of(M)
    uni = res / f"Universal_{A}_{B}" / "segvol__3d_lite"
    r["seconds"]["alone " + na] = train(["-d", A, "--fold", "0"], budget, res / na / "segvol__3d_lite")
    r["seconds"]["alone " + nb] = train(["-d", B, "--fold", "0"], budget, res / nb / "segvol__3d_lite")
    r["seconds"]["universal"] = train(["-d", A, "-d", B, "--fold", "0"], 2 * budget, uni)
    if "universal" not in r["universal"]:
        r["universal"]["alone"] = {**entry(res / na / "segvol__3d_lite", {na: A}),
                                   **{k: v for k, v in entry(res / nb / "segvol__3d_lite", {nb: B}).items()
                                      if k == nb}}
        r["universal"]["universal"] = entry(uni, {na: A, nb: B})
        checkpoint(r)
    # CT→MRI: the universal CT model as it is, and adapted to the MRI dataset three ways
    targets = {nm: M, na: A, nb: B}
    if "zero-shot" not in r["transfer"]:
        r["transfer"]["zero-shot"] = entry(uni, targets)
    runs = {"full fine-tuning": (["--variant", "segvol"], "segvol__3d_lite"),
            "LoRA": (["--variant", "segvol", "--lora"], "segvol-lora__3d_lite"),
            "prior + MoA": (["--variant", "prior"], "prior__3d_lite")}
    for label, (extra, sub) in runs.items():
        r["seconds"][label] = train(["-d", M, "--fold", "0", *extra, "--init", str(uni)], budget, res / nm / sub)
        if label not in r["transfer"]:
            r["transfer"][label] = entry(res / nm / sub, targets)
            checkpoint(r)
    for label, folder in (("segvol (full fine-tuning)", res / nm / "segvol__3d_lite"),
                          ("prior + MoA", res / nm / "prior__3d_lite")):
        spec, model, _ = fold_model(folder)
        r["jitter"][label] = {str(j): score(model, spec, M, "box+text", j)["mean"] for j in JITTERS}
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=300, help="seconds per single-dataset run (universal: 2×)")
    parser.add_argument("--out", default=str(ROOT / "bench_universal.json"))
    parser.add_argument("--render", action="store_true")
    parser.add_argument("--prepare", action="store_true", help="only make, preprocess and pseudo-mask the datasets")
    args = parser.parse_args()
    for key, sub in (("SEGVOL_RAW", "raw"), ("SEGVOL_PREPROCESSED", "preprocessed"), ("SEGVOL_RESULTS", "results")):
        os.environ[key] = str((ROOT / sub).resolve())
    out = Path(args.out)
    if args.prepare:
        run(args.budget, only_prepare=True)
        return
    if not args.render:
        results = run(args.budget)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    print(render(json.loads(out.read_text())))


def render(r: dict) -> str:
    lines = [f"Time budget {r['budget_s']:.0f} s per single-dataset run (universal: twice that, the two runs' sum); "
             "fold 0; test cases; training seconds (epochs) per run: "
             + ", ".join(f"{k} {v['train_s']:.0f} ({v['epochs']})" for k, v in r["seconds"].items()), ""]
    alone, uni = r["universal"]["alone"], r["universal"]["universal"]
    lines += ["| dataset | prompt | model per dataset | universal model | per class (alone → universal) |",
              "|---|---|---:|---:|---|"]
    for d in [k for k in uni if k.startswith("Dataset")]:
        for p in ("text", "box+text"):
            a, u = alone[d][p], uni[d][p]
            per = ", ".join(f"{c} {a[c]:.2f} → {u[c]:.2f}" for c in a if c != "mean")
            lines.append(f"| {d} | {p} | {a['mean']:.3f} | {u['mean']:.3f} | {per} |")
    t = r["transfer"]
    mri = next(k for k in t["zero-shot"] if k.startswith("Dataset") and "MRI" in k)
    cts = [k for k in t["zero-shot"] if k.startswith("Dataset") and k != mri]
    lines += ["", "| CT model adapted to MRI | trainable / total parameters | MRI text | MRI box+text | "
              + " | ".join(f"{c} (CT) text / box+text" for c in cts) + " |", "|---|---:|---:|---:|" + "---:|" * len(cts)]
    for label, e in t.items():
        ct = " | ".join(f"{e[c]['text']['mean']:.3f} / {e[c]['box+text']['mean']:.3f}" for c in cts)
        trainable = "– (not trained)" if label == "zero-shot" else f"{e['trainable'] / 1e6:.2f} M"
        lines.append(f"| {label} | {trainable} / {e['total'] / 1e6:.2f} M | {e[mri]['text']['mean']:.3f} "
                     f"| {e[mri]['box+text']['mean']:.3f} | {ct} |")
    lines += ["", "| box shifted by (voxels) | " + " | ".join(str(j) for j in JITTERS) + " |",
              "|---|" + "---:|" * len(JITTERS)]
    for label, by in r["jitter"].items():
        lines.append(f"| {label}, MRI box+text | " + " | ".join(f"{by[str(j)]:.3f}" for j in JITTERS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
