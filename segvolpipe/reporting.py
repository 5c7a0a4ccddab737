"""Rich tables that summarise what a stage did (the CLI prints them; library code never prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from segvolpipe.log import console

if TYPE_CHECKING:
    from segvolpipe.planning.plans import Plans
    from segvolpipe.preprocessing.stage import PlanPreprocessResult


def plans_table(plans: Plans) -> Table:
    """One row per configuration: spacing, input/patch, model size, batch, memory estimate."""
    table = Table(title=f"{plans.dataset}: plans ({plans.accelerator.kind}, default {plans.default_configuration})")
    for col in ("configuration", "target spacing (mm)", "median shape", "ViT input / patch", "width×layers", "batch", "est. memory", "U-Net patch"):
        table.add_column(col)
    for name, c in plans.configurations.items():
        table.add_row(
            name,
            "×".join(f"{v:.2f}" for v in c.target_spacing),
            "×".join(map(str, c.median_shape)),
            f"{'×'.join(map(str, c.vit.input_size))} / {'×'.join(map(str, c.vit.patch_size))} ({c.vit.num_tokens} tokens)",
            f"{c.vit.hidden_size}×{c.vit.num_layers}",
            str(c.trainer.batch_size),
            f"{c.estimated_memory_gb:.1f} GB",
            "×".join(map(str, c.unet.patch_size)),
        )
    return table


def print_plan_preprocess(result: PlanPreprocessResult) -> None:
    """Summary of a ``plan-preprocess`` run."""
    from segvolpipe.planning.plans import load_plans

    plans_path = result.folder / "plans.json"
    if plans_path.exists() and "planning" in result.seconds:
        console.print(plans_table(load_plans(plans_path)))
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    console.print(
        f"{result.dataset}: {result.preprocessed} preprocessed, {result.skipped} unchanged, "
        f"{result.linked} linked, {len(result.failed)} failed ({timing}) → {result.folder}"
    )
