"""Training probe: N optimiser steps of the trainer's own step on a preprocessed dataset; every K steps the loss and
val crop Dice per class with text prompts (and box+text, box, points). For comparing training changes quickly by
steps, not time: `.venv/bin/python benchmarks/probe_training.py --dataset Dataset901_PhantomLR --steps 300`.

``--aux W`` (promptable variants) adds a prototype auxiliary loss: a dense head on the image encoder's tokens
(two 1×1×1 convolutions) scored against every class's text embedding (aligned by a linear layer; a learned
background vector), upsampled to the input, multi-class CE + Dice with weight W — the all-classes-at-every-voxel
signal the U-Net gets — and reports the head's own argmax Dice. Not part of the model: a probe of whether that
signal speeds the text path up."""
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
from segvolpipe.training.data import CaseStore
from segvolpipe.training.loader import TrainingLoader
from segvolpipe.training.parts import fold_cases
from segvolpipe.training.stage import TrainOptions, build_config
from segvolpipe.training.trainer import Distributed, FoldFiles, Trainer, prompt_samplers

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
ap.add_argument("--aux", type=float, default=0.0)
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
train_cases, val_cases = fold_cases(pre, "0")
torch.manual_seed(cfg.seed)
model = build_model(cfg.model)
unused = set(model.unused_parameter_names()) if hasattr(model, "unused_parameter_names") else set()
for n, q in model.named_parameters():
    if n in unused:
        q.requires_grad_(False)
pf = pre / "pseudomasks" / a.config
store = CaseStore(pre / a.config, train_cases + val_cases, pf if s.pseudo_masks and pf.is_dir() else None)
loader = TrainingLoader(store, train_cases, s, cfg.seed, 1, prompts=prompt_samplers(cfg)[0])  # as the trainer
vo = replace(cfg.sampling, augment=False, zoom_out_probability=0.0, pseudo_masks=False, oversample_foreground=0.5)
val_batches = list(TrainingLoader(store, val_cases, vo, cfg.seed + 1, 0).epoch(0, a.val_batches))
params = [q for q in model.parameters() if q.requires_grad]
opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
tr = Trainer(cfg, model, opt, None, [], FoldFiles(Path(tempfile.mkdtemp())), torch.device("cpu"), Distributed(), False)
tr.state.total_steps = a.steps
names = cfg.model.labels
promptable = cfg.variant != "unet"


def argmax_dice(predict) -> dict[str, float]:
    """Per class, mean Dice of ``predict(image).argmax(1)`` (multi-class logits) over the val batches."""
    per = {n: [] for n in names}
    for batch in val_batches:
        label = batch["label"]
        pred = predict(batch["image"]).argmax(1)
        for b in range(label.shape[0]):
            for v, n in enumerate(names, 1):
                t = label[b] == v
                pr = pred[b] == v
                if t.sum() == 0:
                    continue
                per[n].append(float(2 * (t & pr).sum() / (t.sum() + pr.sum())))
    return {n: (np.mean(v) if v else float("nan")) for n, v in per.items()}


@torch.no_grad()
def val(combo="text"):
    model.eval()
    if promptable:
        return combo_dice(model, val_batches, tr.sources[0][0], names, combo)
    return argmax_dice(model)


if a.aux > 0 and promptable:  # the prototype auxiliary dense head (see the docstring)
    import torch.nn.functional as F
    from torch import nn

    hidden = cfg.model.vit.hidden_size
    head = nn.Sequential(nn.Conv3d(hidden, hidden, 1), nn.GELU(), nn.Conv3d(hidden, hidden, 1))
    align = nn.Linear(hidden, hidden)
    background = nn.Parameter(torch.zeros(hidden))
    opt.add_param_group({"params": [*head.parameters(), *align.parameters(), background], "lr": cfg.lr,
                         "weight_decay": cfg.weight_decay})
    stash = {}
    encode_image = model.encode_image

    def encode_and_keep(image, modality=None):
        stash["tokens"] = encode_image(image, modality)
        return stash["tokens"]

    model.encode_image = encode_and_keep
    class_index = torch.tensor(tr.sources[0][0])

    def aux_logits(tokens):
        classes = model.text_encoder(class_index, torch.zeros_like(class_index))
        weights = torch.cat([background[None], align(classes)])
        logits = torch.einsum("bhzyx,kh->bkzyx", head(tokens.float()), weights) / hidden ** 0.5
        return F.interpolate(logits, size=model.input_size, mode="trilinear", align_corners=False).float()

    prompt_loss = tr._loss

    def loss_with_aux(batch):
        loss = prompt_loss(batch)
        logits, label = aux_logits(stash["tokens"]), batch["label"].long()
        prob = logits.softmax(1)
        onehot = F.one_hot(label, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
        inter, total = (prob * onehot).sum((2, 3, 4)), prob.sum((2, 3, 4)) + onehot.sum((2, 3, 4))
        dice = 1 - ((2 * inter + 1e-5) / (total + 1e-5))[:, 1:].mean()
        return loss + a.aux * (F.cross_entropy(logits, label) + dice)

    tr._loss = loss_with_aux

t0 = time.perf_counter()
losses = []
it = loader.epoch(0, a.steps)
print(f"# {a.tag} {vars(a)}", flush=True)
for step, batch in enumerate(it):
    if step >= a.steps:
        break
    losses.append(tr._step(batch))
    if (step + 1) % a.every == 0 or step + 1 == a.steps:
        m = val()
        mean = np.nanmean(list(m.values()))
        print(f"{a.tag} step {step+1} loss {np.mean(losses[-a.every:]):.4f} val {mean:.3f} " +
              " ".join(f"{k[:5]}={v:.2f}" for k, v in m.items()) + f" t={time.perf_counter()-t0:.0f}s", flush=True)
        if a.aux > 0 and promptable:
            with torch.no_grad():
                model.eval()
                m = argmax_dice(lambda image: aux_logits(model.encode_image(image)))
            print(f"   aux head  {np.nanmean(list(m.values())):.3f} " + " ".join(f"{k[:5]}={v:.2f}" for k, v in m.items()),
                  flush=True)
        if promptable:
            for combo in ("box+text", "box", "points"):
                print(f"   {combo:9s} {np.nanmean(list(val(combo).values())):.3f}", flush=True)
loader.close()
