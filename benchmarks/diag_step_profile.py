"""Where a promptable training step spends its time: sampling with/without augmentation, then image encoder,
decoder, loss and backward + AdamW step for 9, 5 and 3 prompts per image (batch 2
medians of 3 after a warm-up).

`.venv/bin/python benchmarks/diag_step_profile.py Dataset901_PhantomLR`
"""
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from segvolpipe.models.registry import build_model
from segvolpipe.paths import preprocessed_root
from segvolpipe.planning.plans import load_plans
from segvolpipe.training.data import CaseStore, make_sample
from segvolpipe.training.losses import prompt_loss
from segvolpipe.training.parts import fold_cases
from segvolpipe.training.prompts import sample_prompts
from segvolpipe.training.stage import TrainOptions, build_config

torch.set_num_threads(2)
ds = sys.argv[1]
variant = sys.argv[2] if len(sys.argv) > 2 else "segvol"
pre = preprocessed_root() / ds
plans = load_plans(pre / "plans.json")
cfg = build_config(plans, TrainOptions(variant=variant, configuration="3d_lite"), "0", "cpu")
tr, va = fold_cases(pre, "0")
store = CaseStore(pre / "3d_lite", tr, None)
s = replace(cfg.sampling, pseudo_masks=False)
for aug in (True, False):
    t = time.perf_counter()
    for i in range(10):
        make_sample(store, tr[i % len(tr)], np.random.default_rng(i), replace(s, augment=aug))
    print("sample aug" if aug else "sample noaug", (time.perf_counter() - t) / 10)
model = build_model(cfg.model)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
samples = [make_sample(store, tr[i], np.random.default_rng(i), s) for i in range(2)]
img = torch.from_numpy(np.stack([x["image"] for x in samples]))
lab = torch.from_numpy(np.stack([x["label"] for x in samples]).astype(np.int64))
ti = [cfg.model.text_index(n) for n in cfg.model.labels]
for P in (9, 5, 3):
    po = replace(cfg.prompts, max_prompts=P)
    ts = []
    for r in range(4):
        pb = sample_prompts(lab, None, ti, po, torch.Generator().manual_seed(r))
        t0 = time.perf_counter()
        if variant == "unet":
            from segvolpipe.training.losses import unet_loss
            loss = unet_loss(model(img), lab, cfg.model.num_classes)
        else:
            emb = model.encode_image(img)
            t1 = time.perf_counter()
            logits = model.decode(emb, pb.prompts)
            t2 = time.perf_counter()
            loss = prompt_loss(logits, pb.targets, pb.weights)
        t3 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t4 = time.perf_counter()
        if variant != "unet":
            ts.append((t1-t0, t2-t1, t3-t2, t4-t3, t4-t0))
        else:
            ts.append((0,0,t3-t0,t4-t3,t4-t0))
    print(f"P={P} enc/dec/loss/bwd+step/total", np.round(np.median(ts[1:], axis=0), 3))
    if variant == "unet":
        break
