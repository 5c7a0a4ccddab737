"""Training probe: N optimiser steps of the trainer's own step on a preprocessed dataset; every K steps the loss and
val crop Dice per class with text prompts (and box+text, box, points). For comparing training changes quickly by
steps, not time: `.venv/bin/python benchmarks/probe_training.py --dataset Dataset901_PhantomLR --steps 300`."""
import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from segvolpipe.models.registry import build_model
from segvolpipe.paths import preprocessed_root
from segvolpipe.planning.plans import load_plans
from segvolpipe.training.data import CaseStore, TrainingLoader
from segvolpipe.training.stage import TrainOptions, _fold_cases, build_config
from segvolpipe.training.trainer import Distributed, FoldFiles, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from _prompt_eval import combo_dice  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--every", type=int, default=50)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--variant", default="segvol")
ap.add_argument("--max-prompts", type=int, default=None)
ap.add_argument("--combos", default=None)
ap.add_argument("--no-aug", action="store_true")
ap.add_argument("--zoom", type=float, default=None)
ap.add_argument("--oversample", type=float, default=None)
ap.add_argument("--batch", type=int, default=None)
ap.add_argument("--no-pseudo", action="store_true")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--config", default="3d_lite")
ap.add_argument("--dataset", default="Dataset900_PhantomCT")
ap.add_argument("--val-batches", type=int, default=6)
ap.add_argument("--tag", default="")
a = ap.parse_args()
torch.set_num_threads(2)
pre = preprocessed_root() / a.dataset
plans = load_plans(pre / "plans.json")
opts = TrainOptions(variant=a.variant, configuration=a.config, lr=a.lr, batch_size=a.batch, seed=a.seed, workers=1)
cfg = build_config(plans, opts, "0", "cpu")
s = cfg.sampling
if a.no_aug:
    s = replace(s, augment=False)
if a.zoom is not None:
    s = replace(s, zoom_out_probability=a.zoom)
if a.oversample is not None:
    s = replace(s, oversample_foreground=a.oversample)
if a.no_pseudo:
    s = replace(s, pseudo_masks=False)
p = cfg.prompts
if a.max_prompts:
    p = replace(p, max_prompts=a.max_prompts)
if a.combos:
    p = replace(p, combos=tuple(a.combos.split(",")))
cfg = replace(cfg, sampling=s, prompts=p, epochs=1, iters_per_epoch=a.steps)
train_cases, val_cases = _fold_cases(pre, "0")
torch.manual_seed(cfg.seed)
model = build_model(cfg.model)
unused = set(model.unused_parameter_names()) if hasattr(model, "unused_parameter_names") else set()
for n, q in model.named_parameters():
    if n in unused:
        q.requires_grad_(False)
pf = pre / "pseudomasks" / a.config
store = CaseStore(pre / a.config, train_cases + val_cases, pf if s.pseudo_masks and pf.is_dir() else None)
loader = TrainingLoader(store, train_cases, s, cfg.seed, 1)
vo = replace(cfg.sampling, augment=False, zoom_out_probability=0.0, pseudo_masks=False, oversample_foreground=0.5)
val_batches = list(TrainingLoader(store, val_cases, vo, cfg.seed + 1, 0).epoch(0, a.val_batches))
params = [q for q in model.parameters() if q.requires_grad]
opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
tr = Trainer(cfg, model, opt, None, [], FoldFiles(Path(tempfile.mkdtemp())), torch.device("cpu"), Distributed(), False)
tr.state.total_steps = a.steps
names = cfg.model.labels
promptable = cfg.variant != "unet"

@torch.no_grad()
def val(combo="text"):
    model.eval()
    if promptable:
        return combo_dice(model, val_batches, tr.sources[0][0], names, combo)
    per = {n: [] for n in names}
    for batch in val_batches:
        label = batch["label"]
        pred = model(batch["image"]).argmax(1)
        for b in range(label.shape[0]):
            for v, n in enumerate(names, 1):
                t = label[b] == v
                pr = pred[b] == v
                if t.sum() == 0:
                    continue
                per[n].append(float(2 * (t & pr).sum() / (t.sum() + pr.sum())))
    return {n: (np.mean(v) if v else float("nan")) for n, v in per.items()}

t0 = time.perf_counter()
losses = []
it = loader.epoch(0, a.steps)
print(f"# {a.tag} {vars(a)}", flush=True)
for step, batch in enumerate(it):
    if step >= a.steps:
        break
    losses.append(tr._step(batch, 0, step))
    if (step + 1) % a.every == 0 or step + 1 == a.steps:
        m = val()
        mean = np.nanmean(list(m.values()))
        print(f"{a.tag} step {step+1} loss {np.mean(losses[-a.every:]):.4f} val {mean:.3f} " +
              " ".join(f"{k[:5]}={v:.2f}" for k, v in m.items()) + f" t={time.perf_counter()-t0:.0f}s", flush=True)
        if promptable:
            for combo in ("box+text", "box", "points"):
                print(f"   {combo:9s} {np.nanmean(list(val(combo).values())):.3f}", flush=True)
loader.close()
