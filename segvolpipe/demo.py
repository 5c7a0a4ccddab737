"""``segvol demo``: the main job end to end on an embedded phantom CT dataset (Dataset900_PhantomCT).

phantoms → plan-preprocess → pseudomask → train ``segvol`` → train ``so3`` from it → evaluate both on the held-out
test cases (``imagesTs``/``labelsTs``, predicted with the plans' mode, zoom-out-zoom-in) with the rotation test →
one table per class (upright and rotated Dice for each variant), the time of each stage and the figures' paths.

Every stage is the one the commands run, with the demo's budgets; a rerun reuses what is done (a model already
trained with the same settings is not trained again, test predictions and rotation cases are kept).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from segvolpipe.log import console

DEMO_DATASET = 900
VARIANTS = ("segvol", "so3")


@dataclass(frozen=True)
class DemoBudget:
    """Training time per variant (seconds) and the data size of one demo flavour."""

    n_train: int
    n_test: int
    size: tuple[int, int, int]
    train_s: dict[str, float]


FULL = DemoBudget(16, 4, (64, 128, 128), {"segvol": 360.0, "so3": 150.0})
QUICK = DemoBudget(6, 2, (32, 64, 64), {"segvol": 90.0, "so3": 30.0})


@dataclass(frozen=True)
class DemoOptions:
    quick: bool = False
    workers: int = 2
    device: str = "auto"
    progress: bool = True
    train_s: dict[str, float] | None = None  # override the flavour's training budgets (seconds per variant)


@dataclass
class DemoResult:
    dataset: str
    seconds: dict[str, float]
    evaluations: dict[str, Any] = field(default_factory=dict)  # variant -> EvaluateResult
    failures: list[str] = field(default_factory=list)


def _demo_dataset(phantom: object, options: DemoOptions) -> object:
    """The demo's phantom dataset: kept when up to date, regenerated when an earlier demo made it with other
    options (``--quick`` after a full demo); a folder that is not a phantom dataset is never touched."""
    from segvolpipe.phantoms import made_with_other_options, make_phantom_dataset

    return make_phantom_dataset(DEMO_DATASET, phantom, overwrite=made_with_other_options(DEMO_DATASET, phantom),
                                workers=options.workers, progress=options.progress)


def _train(dataset: str, variant: str, budget_s: float, options: DemoOptions, again: bool = False) -> Any:
    """Train fold 0 of ``variant`` for ``budget_s`` seconds, unless it is already trained exactly so (and not
    ``again``: so3 starts from segvol, so a segvol trained anew means so3 is trained anew)."""
    from segvolpipe.training.stage import TrainOptions, is_trained, run_train

    train = TrainOptions(variant=variant, folds=("0",), time_budget_s=budget_s, device=options.device,
                         workers=options.workers, progress=options.progress)
    return run_train(dataset, replace(train, overwrite=again or not is_trained(dataset, train)))


def run_demo(options: DemoOptions) -> DemoResult:
    """Run every stage on the phantom dataset and print what was done, the held-out figures and where."""
    from segvolpipe.evaluation.stage import EvaluateOptions, run_evaluate
    from segvolpipe.phantoms import PhantomOptions
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess
    from segvolpipe.pseudomask.stage import PseudomaskOptions, run_pseudomask
    from segvolpipe.reporting import plans_table, print_pseudomask, print_train

    budget = QUICK if options.quick else FULL
    train_s = {**budget.train_s, **(options.train_s or {})}
    seconds: dict[str, float] = {}
    outputs: dict[str, str] = {}
    phantom = PhantomOptions(n_train=budget.n_train, n_test=budget.n_test, size=budget.size)

    def timed(stage: str, output: Any, start: float) -> None:
        seconds[stage] = time.perf_counter() - start
        outputs[stage] = str(output)

    t0 = time.perf_counter()
    made = _demo_dataset(phantom, options)
    timed("make-phantoms", made.folder, t0)
    t0 = time.perf_counter()
    pp = run_plan_preprocess(made.dataset, PlanPreprocessOptions(workers=options.workers, progress=options.progress))
    timed("plan-preprocess", pp.folder, t0)
    assert pp.plans is not None
    console.print(plans_table(pp.plans))
    t0 = time.perf_counter()
    (pm,) = run_pseudomask(made.dataset, PseudomaskOptions(workers=options.workers, progress=options.progress))
    timed("pseudomask", f"{pm.folder} (QC figures in qc/)", t0)
    print_pseudomask(pm)
    result = DemoResult(made.dataset, seconds)
    for stage, failed in (("plan-preprocess", pp.failed), ("pseudomask", pm.failed)):
        result.failures += [f"{stage}: {c}: {e}" for c, e in failed]
    folders = {}
    retrained = False
    for variant in VARIANTS:
        t0 = time.perf_counter()
        trained = _train(made.dataset, variant, train_s[variant], options, again=retrained)
        retrained = retrained or any(f.status != "skipped" for f in trained.folds)
        print_train(trained)
        folders[variant] = trained.folder
        timed(f"train {variant}", trained.folder, t0)
    for variant in VARIANTS:
        t0 = time.perf_counter()
        evaluated = run_evaluate(EvaluateOptions(model=str(folders[variant]), device=options.device, workers=1,
                                                 progress=options.progress))
        result.evaluations[variant] = evaluated
        result.failures += [f"evaluate {variant}: {f['case']}: {f['error']}" for f in evaluated.failures]
        timed(f"predict + evaluate {variant}", evaluated.output, t0)
    print_demo(result, outputs, train_s)
    return result


def print_demo(result: DemoResult, outputs: dict[str, str], train_s: dict[str, float]) -> None:
    """Per class: test Dice upright and rotated for each variant; then the stages' times and the figures."""
    from rich.table import Table

    def cell(value: Any) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    first = next(iter(result.evaluations.values()), None)
    if first is not None:
        n_cases = first.summary["n_cases"]
        settings = (first.rotation or {}).get("settings", {})
        table = Table(title=f"{result.dataset}: Dice on {n_cases} held-out test case(s)",
                      caption=f"rotated: {settings.get('angles', '–')}; text prompts, {settings.get('mode', '?')} mode; "
                              f"training budgets {', '.join(f'{v} {s:.0f} s' for v, s in train_s.items())} on fold 0")
        table.add_column("class")
        for variant in result.evaluations:
            table.add_column(f"{variant} upright", justify="right")
            table.add_column(f"{variant} rotated", justify="right")
        names = list(first.summary["labels"].values())
        for name in [*names, "mean"]:
            row = [name]
            for evaluated in result.evaluations.values():
                rotation = evaluated.rotation or {}
                measure = rotation.get("mean") if name == "mean" else rotation.get("classes", {}).get(name)
                row += [cell(measure["upright"]), cell(measure["rotated"])] if measure else ["–", "–"]
            table.add_row(*row, style="bold" if name == "mean" else None)
        console.print(table)
    stages = Table(title="segvol demo")
    stages.add_column("stage")
    stages.add_column("seconds", justify="right")
    stages.add_column("output", overflow="fold")
    for stage, secs in result.seconds.items():
        stages.add_row(stage, f"{secs:.1f}", outputs.get(stage, ""))
    stages.add_row("total", f"{sum(result.seconds.values()):.1f}", "", style="bold")
    console.print(stages)
    figures = [p for e in result.evaluations.values() for p in e.files if Path(p).suffix == ".png"]
    if figures:
        console.print("figures: " + ", ".join(str(p) for p in figures[:12]), soft_wrap=True, highlight=False)
