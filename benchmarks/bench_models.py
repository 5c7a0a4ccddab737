"""Model zoo: parameters, inference and training-step time and peak memory of every variant, side by side.

For each configuration (a dataset's ``3d_lite`` from its plans, and SegVol's reference ``3d_segvol``) and each
variant, a fresh process builds the model and measures, on one batch of ``--batch`` images with
``--prompts`` text+box prompts each (the U-Net: one multi-class forward of its own patch size):

* ``infer``: forward in eval mode without gradients,
* ``train``: forward + backward + AdamW step over the trainable parameters,

in float32 or under bf16 autocast (``--precision``: ``auto`` is what training and prediction do — bf16 where the
device computes it natively, CUDA or an AVX512-BF16/AMX CPU; ``both`` measures each variant both ways),

the median of ``--repeats`` timed runs after one warm-up, and the peak memory of the process (CPU: ru_maxrss;
CUDA: ``torch.cuda.max_memory_allocated``).

    .venv/bin/python benchmarks/bench_models.py [-d 900] [--device cpu|cuda] [--configurations 3d_lite,3d_segvol] [--repeats 3] [--precision auto|fp32|bf16|both] [--json out.json]

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


def _measure(args: tuple) -> dict:
    spec_json, device_name, batch, per_image, repeats, bf16 = args
    import torch

    from segvolpipe.models.registry import build_model, count_parameters
    from segvolpipe.models.spec import ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec.from_json(spec_json)
    device = torch.device(device_name)
    model = build_model(spec).to(device)
    counts = count_parameters(model)
    size = spec.unet.patch_size if spec.variant == "unet" else spec.vit.input_size
    image = torch.randn(batch, spec.in_channels, *size, device=device)
    prompts = None if spec.variant == "unet" else _prompts(spec, batch, per_image, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def forward():
        return model(image) if prompts is None else model(image, prompts)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def infer():
        model.eval()
        with torch.no_grad(), autocast:
            forward()

    def train():
        model.train()
        with autocast:
            out = forward()  # the U-Net trains with its deep-supervision heads: a tuple
            loss = sum(o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,)))
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    out = {"bf16": bf16, "variant": spec.variant, "configuration": spec.configuration, "total": counts.total,
           "trainable": counts.trainable}
    for name, fn in (("infer", infer), ("train", train)):
        fn()
        sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        out[f"{name}_s"] = statistics.median(times)
    out["peak_mib"] = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                       else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
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
    jobs = [(b.with_variant(v).to_json(), args.device, args.batch, args.prompts, args.repeats, bf16)
            for b in bases for v in args.variants.split(",") for bf16 in modes]
    results = []
    ctx = mp.get_context("spawn")
    for job in jobs:
        with ctx.Pool(1) as pool:
            r = pool.apply(_measure, (job,))
        results.append(r)
        print(f"{r['configuration']:9s} {r['variant']:7s} {'bf16' if r['bf16'] else 'fp32'}  total {r['total'] / 1e6:8.2f} M  trainable "
              f"{r['trainable'] / 1e6:8.2f} M ({100 * r['trainable'] / r['total']:5.1f} %)  infer {r['infer_s']:7.3f} s  "
              f"train step {r['train_s']:7.3f} s  peak {r['peak_mib']:8.0f} MiB", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
