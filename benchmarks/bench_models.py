"""Model zoo: parameters, inference and training-step time and peak memory of every variant, side by side.

For each configuration (a dataset's ``3d_lite`` from its plans, and SegVol's reference ``3d_segvol``) and each
variant, a fresh process builds the model and measures, on one batch of ``--batch`` images with
``--prompts`` text+box prompts each (the U-Net: one multi-class forward of its own patch size):

* ``infer``: forward in eval mode without gradients,
* ``train``: forward + backward + AdamW step over the trainable parameters,

in float32 or under bf16 autocast (``--precision``: ``auto`` is what training and prediction do — bf16 where the
device computes it natively, CUDA or an AVX512-BF16/AMX CPU; ``both`` measures each variant both ways),

the median of ``--repeats`` timed runs after one warm-up, the training throughput (batch / step time, samples/s)
and the peak memory of the process (CPU: ru_maxrss; CUDA: ``torch.cuda.max_memory_allocated``).

``--max-batch`` (CUDA) then finds the largest training batch that fits on the GPU — batches double from
``--batch`` until a step runs out of memory, then bisect — and times the training step at that batch (the
throughput a GPU of that size reaches with this variant).

    .venv/bin/python benchmarks/bench_models.py [-d 900] [--device cpu|cuda] [--configurations 3d_lite,3d_segvol] [--repeats 3] [--precision auto|fp32|bf16|both] [--max-batch] [--json out.json]

Needs the dataset's plans (``make demo`` makes Dataset900).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _prompts(spec, batch: int, per_image: int, device):
    import torch

    from segvolpipe.models.prompt_encoder import Prompts

    z, y, x = spec.vit.input_size
    lo = torch.tensor([z // 4, y // 4, x // 4], dtype=torch.float32)
    hi = torch.tensor([3 * z // 4, 3 * y // 4, 3 * x // 4], dtype=torch.float32)
    boxes = torch.cat([lo, hi]).expand(batch, per_image, 6).clone()
    text = (torch.arange(batch * per_image) % len(spec.vocabulary)).reshape(batch, per_image)
    modality = torch.ones(batch, dtype=torch.long)  # MRI rows: the prior variant's adapters run
    return Prompts(text=text.to(device), boxes=boxes.to(device), modality=modality.to(device))


class _Bench:
    """One variant on one device: inputs of a given batch, an inference forward and a training step."""

    def __init__(self, spec, device, per_image: int, bf16: bool):
        import torch

        from segvolpipe.models.registry import build_model

        torch.manual_seed(0)
        self.spec, self.device, self.per_image = spec, device, per_image
        self.model = build_model(spec).to(device)
        self.optimiser = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        self.image = self.prompts = None

    def inputs(self, batch: int) -> None:
        import torch

        self.image = self.prompts = None  # free the old batch first
        size = self.spec.unet.patch_size if self.spec.variant == "unet" else self.spec.vit.input_size
        self.image = torch.randn(batch, self.spec.in_channels, *size, device=self.device)
        if self.spec.variant != "unet":
            self.prompts = _prompts(self.spec, batch, self.per_image, self.device)

    def _forward(self):
        return self.model(self.image) if self.prompts is None else self.model(self.image, self.prompts)

    def infer(self) -> None:
        import torch

        self.model.eval()
        with torch.no_grad(), self.autocast():
            self._forward()

    def train(self) -> None:
        self.model.train()
        with self.autocast():
            out = self._forward()  # the U-Net trains with its deep-supervision heads: a tuple
            loss = sum(o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,)))
        loss.backward()
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)

    def time(self, fn, repeats: int) -> float:
        """Median seconds of ``fn`` over ``repeats`` runs after one warm-up."""
        fn()
        self.sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def fits(self, batch: int) -> bool:
        """Whether a training step of ``batch`` images runs without exhausting the GPU's memory."""
        import torch

        try:
            self.inputs(batch)
            self.train()
            self.sync()
            ok = True
        except torch.OutOfMemoryError:
            ok = False
        self.release()  # after the except clause, which keeps the exception (and its frames) alive
        return ok

    def release(self) -> None:
        """Free the batch, the gradients and what a step that ran out of memory left behind (the exception's
        frames hold its tensors in reference cycles, which only the collector breaks)."""
        import gc

        import torch

        self.optimiser.zero_grad(set_to_none=True)
        self.image = self.prompts = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _measure(args: tuple) -> dict:
    spec_json, device_name, batch, per_image, repeats, bf16, max_batch = args
    import torch

    from segvolpipe.models.registry import count_parameters
    from segvolpipe.models.spec import ModelSpec

    spec = ModelSpec.from_json(spec_json)
    device = torch.device(device_name)
    bench = _Bench(spec, device, per_image, bf16)
    counts = count_parameters(bench.model)
    out = {"bf16": bf16, "variant": spec.variant, "configuration": spec.configuration, "total": counts.total,
           "trainable": counts.trainable, "batch": batch}
    bench.inputs(batch)
    out["infer_s"] = bench.time(bench.infer, repeats)
    out["train_s"] = bench.time(bench.train, repeats)
    out["samples_per_s"] = batch / out["train_s"]
    out["peak_mib"] = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                       else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if max_batch and device.type == "cuda":
        out.update(_largest_batch(bench, batch, repeats))
    return out


def _largest_batch(bench: _Bench, start: int, repeats: int, cap: int = 4096) -> dict:
    """The largest training batch that fits (doubling, then bisection), its step time and peak memory."""
    import torch

    good, bad = 0, None
    b = start
    while b <= cap:
        if not bench.fits(b):
            bad = b
            break
        good, b = b, 2 * b
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if bench.fits(mid) else (good, mid)
    out = {"max_batch": good, "gpu_total_mib": torch.cuda.get_device_properties(bench.device).total_memory / 2**20}
    # one step that fits can still leave too little for the next (allocator fragmentation, kernels choosing other
    # workspaces): time the largest batch that runs repeatedly, stepping down 5 % at a time
    timed = good
    while timed > 0:
        try:
            torch.cuda.reset_peak_memory_stats()
            bench.inputs(timed)
            step = bench.time(bench.train, repeats)
            return {**out, "timed_batch": timed, "max_batch_train_s": step, "max_batch_samples_per_s": timed / step,
                    "max_batch_peak_mib": torch.cuda.max_memory_allocated() / 2**20}
        except torch.OutOfMemoryError:
            pass
        bench.release()
        timed = min(timed - 1, int(timed * 0.95))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", default="900")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="segvol,so3,prior,unet")
    parser.add_argument("--configurations", default="3d_lite,3d_segvol",
                        help="3d_lite: the dataset's plans; 3d_segvol: SegVol's reference model.")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "both"), default="auto")
    parser.add_argument("--max-batch", action="store_true",
                        help="CUDA: also find the largest training batch that fits and its throughput.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from segvolpipe.models.spec import spec_from_plans
    from segvolpipe.models.summary import reference_spec
    from segvolpipe.paths import preprocessed_root, resolve_dataset
    from segvolpipe.planning.plans import load_plans

    name = resolve_dataset(args.dataset, preprocessed_root())
    plans = load_plans(preprocessed_root() / name / "plans.json")
    bases = [spec_from_plans(plans, "3d_lite") if c == "3d_lite" else reference_spec()
             for c in args.configurations.split(",")]
    from segvolpipe.precision import native_bf16

    modes = {"auto": [native_bf16(args.device)], "fp32": [False], "bf16": [True], "both": [False, True]}[args.precision]
    jobs = [(b.with_variant(v).to_json(), args.device, args.batch, args.prompts, args.repeats, bf16, args.max_batch)
            for b in bases for v in args.variants.split(",") for bf16 in modes]
    results = []
    ctx = mp.get_context("spawn")
    for job in jobs:
        with ctx.Pool(1) as pool:
            try:
                r = pool.apply(_measure, (job,))
            except Exception as exc:  # one variant's failure (a missing dependency, say) must not lose the rest
                spec = job[0]
                print(f"{spec['configuration']:9s} {spec['variant']:7s} failed: {type(exc).__name__}: {exc}", flush=True)
                results.append({"variant": spec["variant"], "configuration": spec["configuration"],
                                "error": f"{type(exc).__name__}: {exc}"})
                continue
        results.append(r)
        print(f"{r['configuration']:9s} {r['variant']:7s} {'bf16' if r['bf16'] else 'fp32'}  total {r['total'] / 1e6:8.2f} M  trainable "
              f"{r['trainable'] / 1e6:8.2f} M ({100 * r['trainable'] / r['total']:5.1f} %)  infer {r['infer_s']:7.3f} s  "
              f"train step {r['train_s']:7.3f} s ({r['samples_per_s']:6.2f} samples/s)  peak {r['peak_mib']:8.0f} MiB", flush=True)
        if r.get("timed_batch"):
            print(f"{'':17s} largest batch {r['max_batch']:5d} (timed at {r['timed_batch']}): step {r['max_batch_train_s']:7.3f} s "
                  f"({r['max_batch_samples_per_s']:7.2f} samples/s), peak {r['max_batch_peak_mib']:8.0f} of "
                  f"{r['gpu_total_mib']:.0f} MiB", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
