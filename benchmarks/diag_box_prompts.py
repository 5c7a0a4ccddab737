"""Diagnostic: how many steps the promptable model needs to learn "segment the box I give you".

The tests' tiny ``segvol`` model (64 wide, 2 layers, input 16×32×32) is trained on random-noise images with
four random box prompts each (no text); the target is the box itself, so a model that uses box prompts at
all solves it. Prints loss / mean Dice every 50 steps.

    .venv/bin/python benchmarks/diag_box_prompts.py [--steps 1000] [--lr 1e-3] [--pe-scale 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segvolpipe.models.prompt_encoder import Prompts  # noqa: E402
from segvolpipe.models.registry import build_model  # noqa: E402
from segvolpipe.training.losses import prompt_dice, prompt_loss  # noqa: E402
from tests.models.conftest import tiny_spec  # noqa: E402

SIZE = (16, 32, 32)


def batch(g: torch.Generator, b: int = 2, p: int = 4) -> tuple[torch.Tensor, Prompts, torch.Tensor]:
    z, y, x = SIZE
    lo = torch.stack([torch.randint(0, z - 6, (b, p), generator=g), torch.randint(0, y - 10, (b, p), generator=g),
                      torch.randint(0, x - 10, (b, p), generator=g)], -1)
    size = torch.stack([torch.randint(3, 6, (b, p), generator=g), torch.randint(4, 10, (b, p), generator=g),
                        torch.randint(4, 10, (b, p), generator=g)], -1)
    hi = lo + size
    target = torch.zeros(b, p, *SIZE)
    for i in range(b):
        for j in range(p):
            (z0, y0, x0), (z1, y1, x1) = lo[i, j].tolist(), hi[i, j].tolist()
            target[i, j, z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1] = 1
    prompts = Prompts(text=-torch.ones(b, p, dtype=torch.long), boxes=torch.cat([lo, hi], -1).float())
    return torch.randn(b, 1, *SIZE, generator=g), prompts, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pe-scale", type=float, default=1.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    with torch.no_grad():
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(args.pe_scale)
    optimiser = torch.optim.AdamW(model.parameters(), args.lr)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(args.steps + 1):
        image, prompts, target = batch(g)
        logits = model(image, prompts)
        loss = prompt_loss(logits, target, torch.ones(target.shape[:2]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0:
            dice = float(prompt_dice(logits.detach(), target).nanmean())
            print(f"step {step:5d}  loss {loss.item():.3f}  Dice {dice:.3f}  {time.perf_counter() - start:5.1f} s", flush=True)


if __name__ == "__main__":
    main()
