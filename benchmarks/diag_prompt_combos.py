"""Val crop Dice per prompt combination (text, box+text, box, points, points+text) of a trained checkpoint, on 8
fixed batches of the fold-0 validation cases: shows whether a model reads boxes and points at all.

`.venv/bin/python benchmarks/diag_prompt_combos.py results/.../fold_0/checkpoint_final.pt Dataset901_PhantomLR`
"""
import sys
from dataclasses import replace

import numpy as np
import torch

from segvolpipe.models.registry import build_model, load_model_state
from segvolpipe.paths import preprocessed_root
from segvolpipe.planning.plans import load_plans
from segvolpipe.training.data import CaseStore, TrainingLoader
from segvolpipe.training.losses import prompt_dice
from segvolpipe.training.prompts import PromptOptions, sample_prompts
from segvolpipe.training.stage import TrainOptions, _fold_cases, build_config

torch.set_num_threads(1)
ck, ds = sys.argv[1], sys.argv[2]
pre = preprocessed_root() / ds
cfg = build_config(load_plans(pre / "plans.json"), TrainOptions(configuration="3d_lite"), "0", "cpu")
model = build_model(cfg.model).eval()
load_model_state(model, torch.load(ck, weights_only=True)["model"])
tr, va = _fold_cases(pre, "0")
store = CaseStore(pre / "3d_lite", va, None)
vo = replace(cfg.sampling, augment=False, zoom_out_probability=0.0, pseudo_masks=False, oversample_foreground=0.5)
batches = list(TrainingLoader(store, va, vo, 11, 0).epoch(0, 8))
ti = [cfg.model.text_index(n) for n in cfg.model.labels]
names = cfg.model.labels
for combo in ("text", "box+text", "box", "points", "points+text"):
    per = {n: [] for n in names}
    for i, b in enumerate(batches):
        o = PromptOptions(max_prompts=len(names), box_jitter=0, pseudo_prompts=0, absent_text_prompts=0, combos=(combo,))
        pb = sample_prompts(b["label"], None, ti, o, torch.Generator().manual_seed(i))
        with torch.no_grad():
            d = prompt_dice(model(b["image"], pb.prompts), pb.targets)
        for x in range(d.shape[0]):
            for j in range(d.shape[1]):
                c = int(pb.classes[x, j])
                if pb.weights[x, j] > 0 and c > 0 and not torch.isnan(d[x, j]):
                    per[names[c-1]].append(float(d[x, j]))
    m = {n: np.mean(v) if v else float('nan') for n, v in per.items()}
    print(f"{combo:12s} mean {np.nanmean(list(m.values())):.3f} " + " ".join(f"{k[:5]}={v:.2f}" for k, v in m.items()))
