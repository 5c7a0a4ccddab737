"""Where a training step of ``segvol train`` spends its time, on the CPU or a GPU.

Builds what ``segvol train`` builds for a dataset, configuration and variant (config from the plans, the fold's
case stores with pseudo-masks when present, the loader with ``--np`` workers, the model on the device, AdamW,
bf16 autocast where the device does it natively) and measures:

1. the loader alone: batches per second over ``--steps`` batches once its workers are running (for a promptable
   model the workers also draw the prompts, as in training);
2. one step cut into phases, each ended by a device synchronisation, on batches already in memory: host-to-device
   copies and the targets, forward, loss, backward, clipping + AdamW; medians;
3. the loop as the trainer runs it (loader + step), samples per second;
4. with ``--profile``: ``torch.profiler``'s operator table over 5 steps (CPU and, on a GPU, CUDA time).

    .venv/bin/python benchmarks/diag_train_step.py -d 900 -c 3d_lite [--variant segvol] [--device cpu|cuda]
        [--np 2] [--steps 20] [--batch-size N] [--profile] [--loader-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", default="900")
    parser.add_argument("-c", "--configuration", default=None)
    parser.add_argument("--variant", default="segvol")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--np", type=int, default=2, help="loader workers")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--loader-only", action="store_true", help="measure the loader alone (no model is built)")
    args = parser.parse_args()

    import torch

    from segvolpipe.models.prompt_encoder import Prompts
    from segvolpipe.models.registry import build_model
    from segvolpipe.paths import preprocessed_root, resolve_dataset
    from segvolpipe.planning.plans import load_plans
    from segvolpipe.training.loader import TrainingLoader
    from segvolpipe.training.losses import prompt_loss, unet_loss
    from segvolpipe.training.parts import data_parts
    from segvolpipe.training.prompts import region_targets
    from segvolpipe.training.stage import TrainOptions, build_config, resolve_device
    from segvolpipe.training.trainer import prompt_samplers

    name = resolve_dataset(args.dataset, preprocessed_root())
    pre = preprocessed_root() / name
    plans = load_plans(pre / "plans.json")
    device_name = resolve_device(args.device)
    options = TrainOptions(variant=args.variant, configuration=args.configuration, batch_size=args.batch_size,
                           workers=args.np)
    config = build_config(plans, options, "0", device_name)
    part = data_parts(config, pre)[0]
    device = torch.device(device_name)
    promptable = config.variant != "unet"
    print(f"{name} {config.configuration} {config.variant} on {device} (bf16 {config.bf16}), batch "
          f"{config.batch_size}, input {config.sampling.input_size}, {args.np} loader workers, "
          f"pseudo-masks {part.pseudo is not None}", flush=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    loader = TrainingLoader(part.store, part.train, part.sampling, config.seed, args.np,
                            prompts=prompt_samplers(config)[0], pin_memory=device.type == "cuda")  # as the trainer
    # 1. the loader alone (the first batch pays for the workers' start-up)
    it = loader.epoch(0, args.steps + 1)
    batches = [next(it)]
    t = time.perf_counter()
    batches += list(it)
    loader_s = (time.perf_counter() - t) / args.steps
    b = config.batch_size
    print(f"loader alone      {loader_s:7.3f} s/batch  ({b / loader_s:7.2f} samples/s)", flush=True)
    if args.loader_only:
        loader.close()
        return
    torch.manual_seed(0)
    model = build_model(config.model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr)

    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)  # noqa: E731

    def step(batch, phases: dict | None = None):
        marks = [time.perf_counter()]

        def mark():
            if phases is not None:
                sync()
                marks.append(time.perf_counter())

        image, label = batch["image"].to(device), batch["label"].to(device)
        if promptable:
            classes = batch["prompt_classes"]
            pseudo = batch["pseudo"].to(device) if bool((classes < 0).any()) else None
            prompts = Prompts(**{k: v.to(device) for k, v in batch["prompts"].items()})
            targets = region_targets(label, pseudo, classes.to(device))
            weights = batch["prompt_weights"].to(device)
            mark()
            with autocast():
                logits = model(image, prompts)
            mark()
            loss = prompt_loss(logits.float(), targets, weights)
        else:
            mark()
            with autocast():
                out = model(image)
            mark()
            loss = unet_loss(out, label, config.model.num_classes)
        mark()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimiser.step()
        float(loss.detach())
        mark()
        if phases is not None:
            for key, a, b in zip(("to device", "forward", "loss", "backward", "clip + AdamW"),
                                 marks[:-1], marks[1:], strict=True):
                phases.setdefault(key, []).append(b - a)

    model.train()
    step(batches[0])  # warm-up
    phases: dict[str, list[float]] = {}
    for batch in batches[1:]:
        step(batch, phases)
    step_s = sum(statistics.median(v) for v in phases.values())

    # 3. the loop as the trainer runs it
    it = loader.epoch(1, args.steps + 1)
    step(next(it))
    sync()
    t = time.perf_counter()
    for batch in it:
        step(batch)
    sync()
    loop_s = (time.perf_counter() - t) / args.steps
    loader.close()

    for key, values in phases.items():
        print(f"  {key:15s} {statistics.median(values):7.3f} s")
    print(f"step (phases)     {step_s:7.3f} s/batch  ({b / step_s:7.2f} samples/s)")
    print(f"loader + step     {loop_s:7.3f} s/batch  ({b / loop_s:7.2f} samples/s)")
    if device.type == "cuda":
        print(f"peak CUDA memory  {torch.cuda.max_memory_allocated(device) / 2**20:7.0f} MiB")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for batch in batches[1:6]:
                step(batch)
            sync()
        key = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=48))
        if device.type == "cuda":
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))


if __name__ == "__main__":
    main()
