"""``segvol demo``: every stage that exists, end to end, on an embedded phantom CT dataset.

Today: phantoms → plan-preprocess → pseudomask. Each later stage joins here as it lands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from segvolpipe.log import console

DEMO_DATASET = 900


@dataclass(frozen=True)
class DemoOptions:
    quick: bool = False
    workers: int = 2
    progress: bool = True


@dataclass(frozen=True)
class DemoResult:
    dataset: str
    seconds: dict[str, float]


def _demo_dataset(phantom: object, options: DemoOptions) -> object:
    """The demo's phantom dataset: kept when up to date, regenerated when an earlier demo made it with other
    options (``--quick`` after a full demo); a folder that is not a phantom dataset is never touched."""
    from segvolpipe.phantoms import made_with_other_options, make_phantom_dataset

    return make_phantom_dataset(DEMO_DATASET, phantom, overwrite=made_with_other_options(DEMO_DATASET, phantom),
                                workers=options.workers, progress=options.progress)


def run_demo(options: DemoOptions) -> DemoResult:
    """Generate the phantom dataset, plan and preprocess it; print what was done and where."""
    from rich.table import Table

    from segvolpipe.phantoms import PhantomOptions
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess
    from segvolpipe.pseudomask.stage import PseudomaskOptions, run_pseudomask
    from segvolpipe.reporting import plans_table, print_pseudomask

    seconds: dict[str, float] = {}
    phantom = PhantomOptions(n_train=6, n_test=2, size=(32, 64, 64)) if options.quick else PhantomOptions(n_train=16, n_test=4)
    t0 = time.perf_counter()
    made = _demo_dataset(phantom, options)
    seconds["make-phantoms"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pp = run_plan_preprocess(made.dataset, PlanPreprocessOptions(workers=options.workers, progress=options.progress))
    seconds["plan-preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    (pm,) = run_pseudomask(made.dataset, PseudomaskOptions(workers=options.workers, progress=options.progress))
    seconds["pseudomask"] = time.perf_counter() - t0
    assert pp.plans is not None
    console.print(plans_table(pp.plans))
    print_pseudomask(pm)
    table = Table(title="segvol demo")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("output")
    table.add_row("make-phantoms", f"{seconds['make-phantoms']:.1f}", str(made.folder))
    table.add_row("plan-preprocess", f"{seconds['plan-preprocess']:.1f}", str(pp.folder))
    table.add_row("pseudomask", f"{seconds['pseudomask']:.1f}", f"{pm.folder} (QC figures in qc/)")
    console.print(table)
    for stage, failed in (("plan-preprocess", pp.failed), ("pseudomask", pm.failed)):
        if failed:
            console.print(f"[red]{stage}: {len(failed)} case(s) failed[/red]: " + "; ".join(f"{c}: {e}" for c, e in failed))
    return DemoResult(made.dataset, seconds)
