"""The U-Net's training step and training sample, each two ways, side by side in one run (issue 5).

* Step: MONAI DynUNet's deep supervision (every head upsampled to the full patch, stacked, each scored at full
  resolution; what the trainer did before) against the heads at their own resolution with the label downsampled
  to them (what it does now). Same model, same batch, bf16 autocast where the CPU has it, as the trainer; the two
  alternate, so a busy moment of the machine hits both.
* Sample: one augmented training sample of the configuration's patch with the rotated/scaled image sampled by a
  cubic spline (batchgenerators' default) against trilinear (nnU-Net v2 now, and the trainer), alternating.

`--profile` also prints torch's profiler table (top operators by self CPU time) over 5 steps of each way.

`.venv/bin/python benchmarks/bench_unet_step.py -d 900 [--configuration 3d_lite] [--repeats 15] [--samples 200]
[--profile]`
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
from segvolpipe.training.augment import build_transforms  # noqa: E402
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
    args = parser.parse_args()
    torch.manual_seed(0)
    pre = preprocessed_root() / resolve_dataset(args.dataset, preprocessed_root())
    plans = load_plans(pre / "plans.json")
    cfg = build_config(plans, TrainOptions(variant="unet", configuration=args.configuration), "0", "cpu")
    train_cases, _ = fold_cases(pre, "0")
    store = CaseStore(pre / args.configuration, train_cases, None)
    sampling = dataclasses.replace(cfg.sampling, pseudo_masks=False)
    print(machine_info(), "git", git_revision(Path(__file__).resolve().parents[1]), "torch", torch.__version__)
    print(f"{pre.name} {args.configuration}: patch {cfg.sampling.input_size}, batch {cfg.batch_size}, "
          f"bf16 {cfg.bf16 and native_bf16('cpu')}")

    # -- the step ------------------------------------------------------------------------------------------------
    model = build_model(cfg.model).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)
    batch = [make_sample(store, train_cases[i % len(train_cases)], rng, sampling) for i in range(cfg.batch_size)]
    image = torch.from_numpy(np.stack([b["image"] for b in batch]))
    label = torch.from_numpy(np.stack([b["label"] for b in batch]).astype(np.int64))
    cast = autocast(torch.device("cpu"), cfg.bf16 and native_bf16("cpu"))
    k = cfg.model.num_classes

    def upsampled() -> list[torch.Tensor]:  # DynUNet.forward in training: heads interpolated and stacked
        stacked = model.net(image)
        return [stacked[:, h] for h in range(stacked.shape[1])]

    def native() -> tuple[torch.Tensor, ...]:
        return model(image)

    def step(forward) -> None:
        with cast():
            out = forward()
        loss = unet_loss(out, label, k)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    times: dict[str, list[float]] = {"upsampled heads (before)": [], "heads at their resolution (now)": []}
    for r in range(args.repeats + 1):
        for name, forward in zip(times, (upsampled, native), strict=True):
            start = time.perf_counter()
            step(forward)
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    before, now = (statistics.median(v) for v in times.values())
    for name, values in times.items():
        print(f"step, {name}: median {statistics.median(values):.3f} s over {len(values)}")
    print(f"step ratio now / before: {now / before:.2f}x")
    if args.profile:
        from torch.profiler import profile

        for name, forward in zip(times, (upsampled, native), strict=True):
            with profile() as prof:
                for _ in range(5):
                    step(forward)
            print(f"profile, {name}, 5 steps:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    # -- the sample ----------------------------------------------------------------------------------------------
    spatial = build_transforms(tuple(sampling.input_size), sampling.rotation_aug).transforms[0]
    kept = spatial.order_data
    costs: dict[int, list[float]] = {3: [], 1: []}
    for c in train_cases:
        store.class_locations(c)
    try:
        for i in range(args.samples):
            for order in costs:
                spatial.order_data = order
                start = time.perf_counter()
                make_sample(store, train_cases[i % len(train_cases)], np.random.default_rng(i), sampling)
                costs[order].append(time.perf_counter() - start)
    finally:
        spatial.order_data = kept
    for order, values in costs.items():
        print(f"sample, image order {order}: mean {statistics.fmean(values):.4f} s, median "
              f"{statistics.median(values):.4f} s, p90 {np.percentile(values, 90):.4f} s over {len(values)}")
    print(f"sample mean ratio order 1 / order 3: {statistics.fmean(costs[1]) / statistics.fmean(costs[3]):.2f}x")


if __name__ == "__main__":
    main()
