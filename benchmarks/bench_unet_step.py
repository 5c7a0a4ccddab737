"""The U-Net's training step and training sample, each two ways, side by side in one run (issue 5).

* Step: MONAI DynUNet's deep supervision (every head upsampled to the full patch, stacked, each scored at full
  resolution; what the trainer did before) against the heads at their own resolution with the label downsampled
  to them (what it does now). Same model, same batch, bf16 autocast where the CPU has it, as the trainer; the two
  alternate, so a busy moment of the machine hits both.
* Sample: one augmented training sample of the configuration's U-Net patch (or, with ``--sample-variant segvol``, the
  ViT's input; no zoom-out) with batchgenerators' SpatialTransform (order 1 image, order 0 segmentation) against
  :class:`~segvolpipe.training.augment.RotateScaleCrop` (the same draws, resampled with torch), alternating.

`--profile` also prints torch's profiler table (top operators by self CPU time) over 5 steps of each way.
`--batch-size N` times steps of N images instead of the plans' batch; `--compile` also times the current step with
the model under ``torch.compile`` (inductor; its first, compiling step is reported apart).

`.venv/bin/python benchmarks/bench_unet_step.py -d 900 [--configuration 3d_lite] [--repeats 15] [--samples 200]
[--profile] [--no-step] [--sample-variant unet|segvol] [--batch-size N] [--compile]`
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import git_revision, machine_info  # noqa: E402
from segvolpipe.models.registry import build_model  # noqa: E402
from segvolpipe.paths import preprocessed_root, resolve_dataset  # noqa: E402
from segvolpipe.planning.plans import load_plans  # noqa: E402
from segvolpipe.precision import autocast, native_bf16  # noqa: E402
from segvolpipe.training.augment import (  # noqa: E402
    RotateScaleCrop,
    batchgenerators_spatial,
    build_transforms,
    rotation_range,
)
from segvolpipe.training.data import CaseStore, make_sample  # noqa: E402
from segvolpipe.training.losses import unet_loss  # noqa: E402
from segvolpipe.training.parts import fold_cases  # noqa: E402
from segvolpipe.training.stage import TrainOptions, build_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", "--dataset", default="900")
    parser.add_argument("--configuration", default="3d_lite")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-step", action="store_true", help="time the samples only")
    parser.add_argument("--batch-size", type=int, default=None, help="images per timed step (default: the plans')")
    parser.add_argument("--compile", action="store_true", help="also time the current step under torch.compile")
    parser.add_argument("--sample-variant", default="unet",
                        help="whose input the samples have: unet (its patch) or segvol (the ViT's input)")
    args = parser.parse_args()
    torch.manual_seed(0)
    pre = preprocessed_root() / resolve_dataset(args.dataset, preprocessed_root())
    plans = load_plans(pre / "plans.json")
    cfg = build_config(plans, TrainOptions(variant="unet", configuration=args.configuration), "0", "cpu")
    train_cases, _ = fold_cases(pre, "0")
    store = CaseStore(pre / args.configuration, train_cases, None)
    sampling = step_sampling = dataclasses.replace(cfg.sampling, pseudo_masks=False)  # the U-Net's patch
    if args.sample_variant != "unet":
        sampled = build_config(plans, TrainOptions(variant=args.sample_variant, configuration=args.configuration), "0",
                               "cpu")
        sampling = dataclasses.replace(sampled.sampling, pseudo_masks=False, zoom_out_probability=0.0)
    print(machine_info(), "git", git_revision(Path(__file__).resolve().parents[1]), "torch", torch.__version__)
    print(f"{pre.name} {args.configuration}: patch {cfg.sampling.input_size}, batch {cfg.batch_size}, "
          f"bf16 {cfg.bf16 and native_bf16('cpu')}; samples of {args.sample_variant}'s input {sampling.input_size}")

    # -- the step ------------------------------------------------------------------------------------------------
    if not args.no_step:
        model = build_model(cfg.model).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        rng = np.random.default_rng(0)
        batch_size = args.batch_size or cfg.batch_size
        batch = [make_sample(store, train_cases[i % len(train_cases)], rng, step_sampling)
                 for i in range(batch_size)]
        image = torch.from_numpy(np.stack([b["image"] for b in batch]))
        label = torch.from_numpy(np.stack([b["label"] for b in batch]).astype(np.int64))
        cast = autocast(torch.device("cpu"), cfg.bf16 and native_bf16("cpu"))
        k = cfg.model.num_classes

        def upsampled() -> list[torch.Tensor]:  # DynUNet.forward in training: heads interpolated and stacked
            stacked = model.net(image)
            return [stacked[:, h] for h in range(stacked.shape[1])]

        def native() -> tuple[torch.Tensor, ...]:
            return model(image)

        compiled = torch.compile(model) if args.compile else None

        def native_compiled() -> tuple[torch.Tensor, ...]:
            return compiled(image)

        def step(forward) -> None:
            with cast():
                out = forward()
            loss = unet_loss(out, label, k)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

        times: dict[str, list[float]] = {"upsampled heads (before)": [], "heads at their resolution (now)": []}
        forwards = [upsampled, native]
        if compiled is not None:
            start = time.perf_counter()
            step(native_compiled)
            print(f"step, now under torch.compile: first (compiling) step {time.perf_counter() - start:.1f} s")
            times["heads at their resolution, torch.compile"] = []
            forwards.append(native_compiled)
        for r in range(args.repeats + 1):
            for name, forward in zip(times, forwards, strict=True):
                start = time.perf_counter()
                step(forward)
                if r:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
        before, now = (statistics.median(times[name]) for name in list(times)[:2])
        for name, values in times.items():
            print(f"step, {name}: median {statistics.median(values):.3f} s over {len(values)}")
        print(f"step ratio now / before: {now / before:.2f}x (batch {batch_size})")
        if compiled is not None:
            print(f"step ratio torch.compile / now: "
                  f"{statistics.median(times['heads at their resolution, torch.compile']) / now:.2f}x")
        if args.profile:
            from torch.profiler import profile

            for name, forward in zip(times, (upsampled, native), strict=True):
                with profile() as prof:
                    for _ in range(5):
                        step(forward)
                print(f"profile, {name}, 5 steps:")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    # -- the sample ----------------------------------------------------------------------------------------------
    # the trainer's cached pipeline with its spatial step swapped: batchgenerators' SpatialTransform (order 1 image,
    # order 0 segmentation; the trainer's until 4c1db25) against RotateScaleCrop (the same draws, torch resampling)
    torch.set_num_threads(1)  # as in the loader's workers
    pipeline = build_transforms(tuple(sampling.input_size), sampling.rotation_aug)
    kept = pipeline.transforms[0]
    rotation = rotation_range(sampling.rotation_aug)
    ways = {"batchgenerators SpatialTransform": batchgenerators_spatial(tuple(sampling.input_size), rotation),
            "RotateScaleCrop (now)": RotateScaleCrop(tuple(sampling.input_size), rotation)}
    costs: dict[str, list[float]] = {name: [] for name in ways}
    for c in train_cases:
        store.class_locations(c)
    try:
        for i in range(args.samples):
            for name, spatial in ways.items():
                pipeline.transforms[0] = spatial
                start = time.perf_counter()
                make_sample(store, train_cases[i % len(train_cases)], np.random.default_rng(i), sampling)
                costs[name].append(time.perf_counter() - start)
    finally:
        pipeline.transforms[0] = kept
    for name, values in costs.items():
        print(f"sample, {name}: mean {statistics.fmean(values):.4f} s, median "
              f"{statistics.median(values):.4f} s, p90 {np.percentile(values, 90):.4f} s over {len(values)}")
    before, now = (statistics.fmean(v) for v in costs.values())
    print(f"sample mean ratio now / before: {now / before:.2f}x")

if __name__ == "__main__":
    main()
