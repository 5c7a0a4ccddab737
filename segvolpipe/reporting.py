"""Rich tables that summarise what a stage did (the CLI prints them; library code never prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from segvolpipe.log import console

if TYPE_CHECKING:
    from segvolpipe.evaluation.compare import CompareResult
    from segvolpipe.evaluation.stage import EvaluateResult
    from segvolpipe.inference.stage import PredictResult
    from segvolpipe.models.summary import ModelsResult
    from segvolpipe.planning.plans import Plans
    from segvolpipe.preprocessing.stage import PlanPreprocessResult
    from segvolpipe.pseudomask.stage import PseudomaskResult
    from segvolpipe.training.stage import TrainResult


def _x(values: tuple) -> str:
    return "×".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in values)


def plans_table(plans: Plans) -> Table:
    """One column per configuration, one row per planned quantity (fits an 80-column terminal)."""
    table = Table(title=f"{plans.dataset}: plans for {plans.accelerator.kind} (default {plans.default_configuration})")
    table.add_column("")
    confs = list(plans.configurations.values())
    for c in confs:
        table.add_column(c.name)
    rows = {
        "target spacing (mm)": [_x(c.target_spacing) for c in confs],
        "median shape": [_x(c.median_shape) for c in confs],
        "ViT input": [_x(c.vit.input_size) for c in confs],
        "ViT patch (tokens)": [f"{_x(c.vit.patch_size)} ({c.vit.num_tokens})" for c in confs],
        "width × layers": [f"{c.vit.hidden_size} × {c.vit.num_layers}" for c in confs],
        "batch (est. memory)": [f"{c.trainer.batch_size} ({c.estimated_memory_gb:.1f} GB)" for c in confs],
        "U-Net patch": [_x(c.unet.patch_size) for c in confs],
        "normalisation": [", ".join(n.scheme for n in plans.normalization)] * len(confs),
    }
    for name, values in rows.items():
        table.add_row(name, *values)
    return table


def print_plan_preprocess(result: PlanPreprocessResult) -> None:
    """Summary of a ``plan-preprocess`` run."""
    if result.plans is not None:
        console.print(plans_table(result.plans))
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    if not result.configurations:
        done = "fingerprint, plans and splits" if "planning" in result.seconds else "fingerprint"
        reused = " (unchanged, reused)" if result.fingerprint_reused else ""
        console.print(f"{result.dataset}: {done} written{reused} ({timing}) → {result.folder}")
        return
    console.print(
        f"{result.dataset}: {result.preprocessed} preprocessed, {result.skipped} unchanged, "
        f"{result.linked} linked, {len(result.failed)} failed ({timing}) → {result.folder}"
    )


def print_pseudomask(result: PseudomaskResult) -> None:
    """Per class best-match Dice, then region count, coverage and timing."""
    table = Table(title=f"{result.dataset} ({result.configuration}): pseudo-masks vs labels")
    table.add_column("class")
    table.add_column("best-match Dice", justify="right")
    table.add_column("before cleaning", justify="right")
    for name, dice in result.class_dice.items():
        raw = result.class_dice_before_cleaning.get(name)
        table.add_row(name, f"{dice:.3f}", "–" if raw is None else f"{raw:.3f}")
    if result.class_dice:
        console.print(table)
    console.print(
        f"{result.dataset}: {result.done} made, {result.skipped} unchanged, {len(result.failed)} failed; "
        f"{result.mean_regions:.0f} regions per case, {100 * result.mean_coverage:.0f} % of the body covered "
        f"({result.seconds:.1f} s) → {result.folder}"
    )


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def print_models(result: ModelsResult) -> None:
    """Parameter counts per variant (total / trainable / %), then the pretrained-load report if any."""
    table = Table(title=f"{result.source} — {result.configuration}, input {_x(result.input_size)} (z×y×x)")
    for name, justify in (("variant", "left"), ("total", "right"), ("trainable", "right"), ("%", "right"),
                          ("what it is", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in result.rows:
        table.add_row(row.variant, _millions(row.total), _millions(row.trainable), f"{row.trainable_percent:.1f} %",
                      row.description)
    console.print(table)
    report = result.load_report
    if report is None:
        return
    load = Table(title=f"{report.source} ({report.layout})")
    load.add_column("tensors of")
    load.add_column("count", justify="right")
    load.add_column("status")
    for what, count, status in report.rows():
        load.add_row(what, str(count), status)
    console.print(load)


def print_train(result: TrainResult) -> None:
    """Per fold: status, epochs, best EMA Dice and the validation Dice (text, box + text, or U-Net)."""
    table = Table(title=f"{result.dataset}: {result.variant} ({result.configuration})")
    for name in ("fold", "status", "epochs", "best EMA Dice (epoch)", "validation Dice", "minutes"):
        table.add_column(name, justify="left" if name in ("fold", "status") else "right")
    for f in result.folds:
        # one dataset: {kind: summary}; a universal model: {dataset: {kind: summary}}
        parts = {"": f.validation} if not any(k.startswith("Dataset") for k in f.validation) else f.validation
        val = "; ".join(
            (f"{name}: " if name else "") + " / ".join(
                f"{kind} {summary['foreground_mean']:.3f}" for kind, summary in kinds.items()
                if isinstance(summary, dict) and "foreground_mean" in summary)
            for name, kinds in parts.items())
        best = "–" if f.best_ema_dice is None else f"{f.best_ema_dice:.3f} ({f.best_epoch})"
        table.add_row(f.fold, f.status, str(f.epochs), best, val or "–", f"{f.seconds / 60:.1f}")
    console.print(table)
    console.print(f"→ {result.folder}")


def print_predict(result: PredictResult) -> None:
    """Per case: status, the volume of each class found (ml) or the error, and seconds; then where the files are."""
    s = result.settings
    table = Table(title=f"{result.model.parent.name}: {s['variant']} ({s['configuration']}), folds "
                        f"{', '.join(s['folds'])}, {s['mode']}{' + TTA' if s['tta'] else ''}, {s['device']}")
    for name in ("case", "status", "volumes (ml) / error", "seconds"):
        table.add_column(name, justify="right" if name == "seconds" else "left", overflow="fold")
    for case, r in result.cases.items():
        skipped = case in result.skipped
        status = "skipped" if skipped else r.get("status", "?")
        found = {c: v for c, v in (r.get("volumes_ml") or {}).items() if v > 0}
        detail = r["error"] if r.get("error") else (", ".join(f"{c} {v:.1f}" for c, v in found.items()) or "nothing found")
        seconds = r.get("seconds")
        table.add_row(case, status, detail, "–" if seconds is None or skipped else f"{seconds:.1f}")
    console.print(table)
    console.print(f"→ {result.output} (predictions.json)")


def _score(value: float | None, signed: bool = False) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def print_evaluate(result: EvaluateResult) -> None:
    """Mean metrics per class, then the rotation test per class and the sweep; then where the files are."""
    summary = result.summary
    where = f"{result.model.parent.name}: {result.model.name}" if result.model else str(summary.get("prediction_folder"))
    table = Table(title=f"{where} — {result.source}, {summary['n_cases']} case(s) scored")
    extra = [k for k in ("HD95", "NSD") if k in summary["foreground_mean"]]
    for name in ("class", "Dice", "IoU", *[f"{k} (mm)" if k == "HD95" else k for k in extra], "pred ml", "ref ml"):
        table.add_column(name, justify="left" if name == "class" else "right")
    rows = [(summary["labels"][v], m) for v, m in summary["mean"].items()] + [("mean", summary["foreground_mean"])]
    for name, m in rows:
        ml = [f"{m[k]:.1f}" if m.get(k) is not None and name != "mean" else "–" for k in ("pred_ml", "ref_ml")]
        cells = [_score(m.get(k)) if k != "HD95" else ("–" if m.get(k) is None else f"{m[k]:.2f}")
                 for k in ("Dice", "IoU", *extra)]
        table.add_row(name, *cells, *ml, style="bold" if name == "mean" else None)
    console.print(table)
    rotation = result.rotation
    if rotation is not None:
        s = rotation["settings"]
        rot = Table(title=f"rotation test, {rotation['n_cases']} case(s)",
                    caption=f"{s['angles']}; {s['prompt']} prompts, {s['mode']}")
        for name in ("class", "upright", "rotated", "drop", "consistency"):
            rot.add_column(name, justify="left" if name == "class" else "right")
        for name, c in [*rotation["classes"].items(), ("mean", rotation["mean"])]:
            rot.add_row(name, _score(c["upright"]), _score(c["rotated"]), _score(c["drop"], signed=True),
                        _score(c["consistency"]), style="bold" if name == "mean" else None)
        console.print(rot)
        sweep = rotation.get("sweep")
        if sweep:
            swept = Table(title="Dice against rotation about the longitudinal axis")
            swept.add_column("angle (°)", justify="right")
            for name in (*sweep["classes"], "mean"):
                swept.add_column(name, justify="right")
            for i, angle in enumerate(sweep["angles_deg"]):
                swept.add_row(f"{angle:g}", *[_score(v[i]) for v in sweep["classes"].values()],
                              _score(sweep["mean"][i]))
            console.print(swept)
    names = sorted({p.name for p in result.files})
    console.print(f"→ {result.output} ({', '.join(names)})")


def print_compare(result: CompareResult) -> None:
    """One row per model folder: Dice, rotation test, seconds per case; then the warnings and the files."""
    table = Table(title=f"{result.dataset}: variants compared")
    for name in ("variant", "configuration", "source", "mode", "cases", "Dice", "upright", "rotated", "drop",
                 "consistency", "s / case"):
        table.add_column(name, justify="left" if name in ("variant", "configuration", "source", "mode") else "right")
    for r in result.rows:
        if not r.evaluated:
            table.add_row(r.variant, r.configuration, "not evaluated", *["–"] * 8)
            continue
        seconds = "–" if r.seconds != r.seconds else f"{r.seconds:.2f}"
        mode = (r.rotation_settings or {}).get("mode") or "–"
        table.add_row(r.variant, r.configuration, r.source or "?", mode, str(r.cases), _score(r.dice), _score(r.upright),
                      _score(r.rotated), _score(r.drop, signed=True), _score(r.consistency), seconds)
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]note:[/yellow] {warning}", markup=True, highlight=False, soft_wrap=True)
    console.print(f"→ {result.folder} ({', '.join(p.name for p in result.files)})")
