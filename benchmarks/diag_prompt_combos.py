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
from segvolpipe.training.data import CaseStore
from segvolpipe.training.loader import TrainingLoader
from segvolpipe.training.parts import fold_cases
from segvolpipe.training.stage import TrainOptions, build_config

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _prompt_eval import combo_dice  # noqa: E402

torch.set_num_threads(1)
ck, ds = sys.argv[1], sys.argv[2]
pre = preprocessed_root() / ds
cfg = build_config(load_plans(pre / "plans.json"), TrainOptions(configuration="3d_lite"), "0", "cpu")
model = build_model(cfg.model).eval()
load_model_state(model, torch.load(ck, weights_only=True)["model"])
tr, va = fold_cases(pre, "0")
store = CaseStore(pre / "3d_lite", va, None)
vo = replace(cfg.sampling, augment=False, zoom_out_probability=0.0, pseudo_masks=False, oversample_foreground=0.5)
batches = list(TrainingLoader(store, va, vo, 11, 0).epoch(0, 8))
ti = [cfg.model.text_index(n) for n in cfg.model.labels]
names = cfg.model.labels
for combo in ("text", "box+text", "box", "points", "points+text"):
    m = combo_dice(model, batches, ti, names, combo)
    print(f"{combo:12s} mean {np.nanmean(list(m.values())):.3f} " + " ".join(f"{k[:5]}={v:.2f}" for k, v in m.items()))
