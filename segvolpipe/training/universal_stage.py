"""``segvol train -d A -d B``: one universal model over several preprocessed datasets.

See :mod:`segvolpipe.training.universal` for the label unification, the sampling and how spacing is handled; the
folds run through :func:`segvolpipe.training.stage.train_fold` like any other.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from segvolpipe.errors import UserError
from segvolpipe.io.atomic import read_json, write_json
from segvolpipe.models.registry import check_variant
from segvolpipe.models.spec import CT
from segvolpipe.paths import preprocessed_root, resolve_dataset
from segvolpipe.planning.plans import Plans, load_plans
from segvolpipe.training.config import FOLDS, TrainConfig
from segvolpipe.training.stage import (
    TrainOptions,
    TrainResult,
    build_config,
    copy_metadata,
    launcher_rank,
    resolve_device,
    results_folder,
    train_fold,
)
from segvolpipe.training.universal import UniversalPlan, plan_universal, universal_plans, universal_spec


def run_train_universal(datasets: list[str], options: TrainOptions, weights: list[float] | None = None,
                        name: str | None = None) -> TrainResult:
    """Train one promptable model on several preprocessed datasets (see :mod:`segvolpipe.training.universal`).

    Results go to ``results/Universal_{name}/{variant}__{configuration}/``: ``universal.json`` (datasets, weights,
    vocabulary, each dataset's label → vocabulary index), ``plans.json`` (the reference dataset's plans with the
    universal classes, for raw folders), and ``datasets/{DatasetXXX}/`` with each dataset's plans.json,
    dataset.json and fingerprint.json (``segvol predict -m FOLDER -d X`` preprocesses as X).
    """
    names = [resolve_dataset(d, preprocessed_root()) for d in datasets]
    plans = [load_plans(preprocessed_root() / n / "plans.json") for n in names]
    variant = check_variant(options.variant)
    if variant == "unet":
        raise UserError("a universal model is promptable (segvol, so3 or prior): the unet variant has one fixed "
                        "label set, so a class one dataset leaves unlabelled would be taught as background")
    if options.init or options.lora or options.pretrained:
        raise UserError("a universal model trains from scratch (so3/prior: from the universal segvol model); "
                        "--init, --lora and --pretrained are for one dataset")
    plan = plan_universal(plans, weights, name)
    configuration = plans[0].configuration(options.configuration).name
    for p in plans[1:]:
        p.configuration(configuration)  # every dataset must have it planned (UserError naming the choices)
    for n in names:
        if not (preprocessed_root() / n / configuration).is_dir():
            raise UserError(f"{n} has no preprocessed {configuration} cases: run 'segvol plan-preprocess -d {n}'",
                            preprocessed_root() / n)
    device = resolve_device(options.device)
    for fold in options.folds:
        if fold not in FOLDS:
            raise UserError(f"unknown fold {fold!r} (0–4 or all)")
    spec = universal_spec(plans[0], plan, configuration, variant)

    def config_for(fold: str) -> TrainConfig:
        config = build_config(plans[0], replace(options, configuration=configuration), fold, device)
        return replace(config, dataset=plan.name, model=spec, universal=plan, detail_aux_weight=0.0,
                       sampling=replace(config.sampling, label_mirror=None))

    first = config_for(options.folds[0])
    if first.variant == "prior" and all(s.modality == CT for s in plan.sources):
        raise UserError("every dataset is CT: the prior variant's gate sends CT through the identity expert, so it "
                        "would train nothing")
    out = results_folder(plan.name, variant, configuration)
    if launcher_rank() == 0:
        _write_universal_metadata(out, plans, plan)
    results = [train_fold(config_for(fold), options, preprocessed_root() / names[0], out / f"fold_{fold}")
               for fold in options.folds]
    return TrainResult(plan.name, variant, configuration, out, results)


def _write_universal_metadata(out: Path, plans: list[Plans], plan: UniversalPlan) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "universal.json", plan.to_json())
    write_json(out / "plans.json", universal_plans(plans[0], plan).to_json())
    reference = read_json(preprocessed_root() / plan.reference / "dataset.json")
    reference["labels"] = {"background": 0, **{n: i + 1 for i, n in enumerate(plan.labels)}}
    reference["name"] = plan.name
    write_json(out / "dataset.json", reference, stamp=False)
    for p in plans:
        copy_metadata(preprocessed_root() / p.dataset, out / "datasets" / p.dataset)
