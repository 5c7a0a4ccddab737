"""``segvol train``: train one variant on one or all folds of a preprocessed dataset.

Results go to ``results/DatasetXXX/{variant}__{configuration}/`` (with copies of plans.json, dataset.json and
fingerprint.json, so inference needs only that folder) and ``fold_{k}/`` inside it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from segvolpipe.errors import UserError
from segvolpipe.io.atomic import atomic_path, read_json, remove_stale_temporaries, write_json
from segvolpipe.io.lock import stage_lock
from segvolpipe.log import logger
from segvolpipe.models.registry import build_model, check_variant
from segvolpipe.models.spec import CT, ModelSpec, spec_from_plans
from segvolpipe.paths import preprocessed_root, resolve_dataset, results_root
from segvolpipe.planning.plans import Plans, load_plans
from segvolpipe.training.checkpoint import check_same_spec, load_checkpoint
from segvolpipe.training.config import FOLDS, TrainConfig, augmentation_fields, config_from_plans
from segvolpipe.training.parts import data_parts, data_splits
from segvolpipe.training.trainer import Distributed, FoldFiles
from segvolpipe.training.transfer import (
    init_checkpoint,
    is_transfer,
    load_transferred,
    read_init,
    training_spec,
)

ADAPTED = ("so3", "prior")  # variants that start from a trained segvol model
BUDGET_EPOCH_CAP = 10_000


@dataclass(frozen=True)
class TrainOptions:
    """Options of ``segvol train`` (None: the plans' default)."""

    variant: str = "segvol"
    configuration: str | None = None
    folds: tuple[str, ...] = ("0",)
    epochs: int | None = None
    iters_per_epoch: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    detail_lr: float | None = None
    time_budget_s: float | None = None
    device: str = "auto"
    init: str | None = None
    lora: bool = False
    pretrained: str | None = None
    resume: bool = False
    overwrite: bool = False
    augmentation: str | None = None  # full | mirror | none
    rotation_aug: bool | None = None
    pseudo_masks: bool | None = None
    gpus: int = 1
    seed: int = 0
    workers: int | None = None  # None: see loader_workers
    progress: bool = True
    bf16: bool | None = None


@dataclass
class FoldResult:
    fold: str
    folder: Path
    status: str  # trained | resumed | skipped | validated
    epochs: int = 0
    best_epoch: int | None = None
    best_ema_dice: float | None = None
    validation: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class TrainResult:
    dataset: str
    variant: str
    configuration: str
    folder: Path
    folds: list[FoldResult]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked but torch sees no CUDA GPU")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r} (auto, cpu or cuda)")
    return name


def launcher_rank() -> int:
    """This process's rank when torchrun started it (0 otherwise): only rank 0 touches the results folder."""
    return int(os.environ.get("RANK", "0"))


def results_folder(dataset: str, variant: str, configuration: str) -> Path:
    return results_root() / dataset / f"{variant}__{configuration}"


def run_folder(dataset: str, spec: ModelSpec) -> Path:
    """``results/{dataset}/{spec.run_name}``: ``segvol-lora__…`` for the plain-LoRA baseline."""
    return results_root() / dataset / spec.run_name


def copy_metadata(pre: Path, out: Path) -> None:
    for name in ("plans.json", "dataset.json", "fingerprint.json"):
        if (pre / name).exists():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(pre / name, tmp)


def _init_source(config: TrainConfig, options: TrainOptions) -> tuple[Path | None, str]:
    """Checkpoint the model starts from and how it was found."""
    if options.init:
        return init_checkpoint(options.init, config.fold), "init"
    if options.pretrained:
        return Path(options.pretrained), "pretrained"
    if config.variant in ADAPTED:
        base = results_folder(config.dataset, "segvol", config.configuration) / f"fold_{config.fold}"
        if (base / "checkpoint_final.pt").is_file():
            return base / "checkpoint_final.pt", "segvol"
        raise UserError(
            f"the {config.variant} variant starts from a trained segvol model, and there is none for fold "
            f"{config.fold}: run 'segvol train -d {config.dataset} -c {config.configuration} --fold {config.fold} "
            "--variant segvol' first, or pass --init RESULTS_FOLDER_OR_CHECKPOINT / --pretrained FILE", base)
    return None, ""


def _load_init(model: torch.nn.Module, spec: ModelSpec, path: Path, kind: str) -> None:
    from segvolpipe.models.pretrained import load_pretrained

    if kind in ("init", "segvol"):
        payload = load_checkpoint(path, mmap=True)
        base = ModelSpec.from_json(payload["spec"])
        if kind == "init" and is_transfer(spec, base):  # another dataset's model (build_config made the spec)
            report = load_transferred(model, path)
            logger.info("model initialised from %s, another dataset's model (%d tensors loaded, %d names added to "
                        "its vocabulary, %d new in this variant, %d of the file unused)", path, len(report.loaded),
                        len(spec.vocabulary) - len(base.vocabulary), len(report.new_in_variant),
                        len(report.unexpected))
            return
        if base.variant != "unet" and spec.variant != "unet":
            check_same_spec(payload, spec.with_variant(base.variant, so3=base.so3, prior=base.prior).to_json(), path)
    report = load_pretrained(model, path)
    logger.info("model initialised from %s (%d tensors loaded, %d new in this variant, %d missing)",
                path, len(report.loaded), len(report.new_in_variant), len(report.missing))


# nnU-Net's default number of augmentation processes per GPU (nnUNet_n_proc_DA)
MAX_GPU_LOADER_WORKERS = 12


def loader_workers(requested: int | None, device: str, gpus: int = 1) -> int:
    """Data-loading workers per training process: ``requested``, or by default 2 on the CPU (the training process
    needs the cores for the model) and, on CUDA, all but one of the process's share of the CPUs, at most 12:
    there the GPU steps faster than a few workers can augment (BENCHMARKS.md, "On one H100")."""
    if requested is not None:
        return requested
    if device != "cuda":
        return 2
    from segvolpipe.parallel import default_workers

    return max(2, min(MAX_GPU_LOADER_WORKERS, default_workers() // max(1, gpus) - 1))


def build_config(plans: Plans, options: TrainOptions, fold: str, device: str) -> TrainConfig:
    spec = spec_from_plans(plans, options.configuration, check_variant(options.variant))
    # another dataset's --init model (or --lora): its sizes, this dataset's labels; before config_from_plans,
    # which takes the crop size from the spec
    spec = training_spec(spec, plans.dataset, options.init, fold, options.lora, options.configuration)
    epochs = options.epochs
    if epochs is None and options.time_budget_s is not None:
        epochs = BUDGET_EPOCH_CAP  # the budget decides: the schedule is fitted after the first epoch
    trainer = plans.configuration(spec.configuration).trainer
    augmentation = options.augmentation or trainer.augmentation
    if options.rotation_aug and augmentation != "full":
        source = "" if options.augmentation else " (the plans')"
        raise UserError(f"--rotation-aug widens the rotations of the full augmentation, but the augmentation is "
                        f"{augmentation!r}{source}: use --augmentation full")
    if augmentation == "mirror" and spec.variant != "unet" and not trainer.promptable_mirror_axes:
        source = "" if options.augmentation else " (the plans' augmentation)"
        raise UserError(f"--augmentation mirror{source} mirrors a promptable model along the plans' "
                        "promptable_mirror_axes, which are empty: use --augmentation none, or set them in plans.json")
    return config_from_plans(
        plans, spec, fold, epochs=epochs, iters_per_epoch=options.iters_per_epoch,
        batch_size=options.batch_size, lr=options.lr, detail_lr=options.detail_lr,
        time_budget_s=options.time_budget_s, seed=options.seed,
        device=device, workers=loader_workers(options.workers, device, options.gpus), init=options.init,
        pretrained=options.pretrained, gpus=options.gpus, **{f"sampling_{k}": v for k, v in
                                                             augmentation_fields(augmentation).items()},
        sampling_rotation_aug=options.rotation_aug, sampling_pseudo_masks=options.pseudo_masks, bf16=options.bf16,
    )


def run_train(dataset: str | None, options: TrainOptions) -> TrainResult:
    """Train ``options.variant`` on each fold of ``options.folds``; skips folds already trained identically."""
    name = resolve_dataset(dataset, preprocessed_root())
    pre = preprocessed_root() / name
    plans = load_plans(pre / "plans.json")
    device = resolve_device(options.device)
    for fold in options.folds:
        if fold not in FOLDS:
            raise UserError(f"unknown fold {fold!r} (0–4 or all)")
    first = build_config(plans, options, options.folds[0], device)
    if first.variant == "prior" and first.model.modality == CT:
        raise UserError(f"{name} is CT: the prior variant's gate sends CT through the identity expert, so it would "
                        "train nothing; train it on an MRI dataset with --init <a CT model> (segvol or so3 here)")
    out = run_folder(name, first.model)
    if launcher_rank() == 0:
        copy_metadata(pre, out)
        if options.init and _from_another_dataset(options.init, first, plans):
            _copy_init_datasets(options.init, first.fold, pre, out)
    results = []
    for fold in options.folds:
        config = build_config(plans, options, fold, device)
        results.append(train_fold(config, options, pre, out / f"fold_{fold}"))
    return TrainResult(name, first.variant, first.configuration, out, results)


def _from_another_dataset(init: str, config: TrainConfig, plans: Plans) -> bool:
    """Whether ``--init`` is a model of another dataset (recorded in its checkpoint; for a checkpoint that records
    none, whether its spec had to be transferred). Sizes alone cannot tell: a CT and an MRI dataset with the same
    labels and plans give the same spec but for the modality."""
    source = read_init(init_checkpoint(init, config.fold))
    if source.dataset is not None:
        return source.dataset != plans.dataset
    return config.model != spec_from_plans(plans, config.configuration, config.variant)


def _copy_init_datasets(init: str, fold: str, pre: Path, out: Path) -> None:
    """A model transferred from another dataset's model still segments that dataset's images (``prior``: exactly as
    before): ``datasets/`` gets the init model's datasets' metadata and this dataset's, so ``segvol predict -m OUT
    -d X`` preprocesses as X."""
    checkpoint = init_checkpoint(init, fold)
    folder = checkpoint.parent.parent if checkpoint.parent.name.startswith("fold_") else checkpoint.parent
    if (folder / "datasets").is_dir():
        for known in sorted(p for p in (folder / "datasets").iterdir() if p.is_dir()):
            copy_metadata(known, out / "datasets" / known.name)
    elif (folder / "plans.json").is_file():
        copy_metadata(folder, out / "datasets" / load_plans(folder / "plans.json").dataset)
    copy_metadata(pre, out / "datasets" / pre.name)


def _trained(config: TrainConfig, files: FoldFiles) -> bool:
    if not (files.final.exists() and files.config.exists()):
        return False
    try:
        return TrainConfig.from_json(read_json(files.config)).trains_like(config)
    except (UserError, KeyError, TypeError, ValueError):  # an unreadable record is not a finished run
        return False


def is_trained(dataset: str | None, options: TrainOptions) -> bool:
    """Whether every fold of ``options`` is already trained with these settings (``segvol train`` would skip it)."""
    name = resolve_dataset(dataset, preprocessed_root())
    plans = load_plans(preprocessed_root() / name / "plans.json")
    device = resolve_device(options.device)
    for fold in options.folds:
        config = build_config(plans, options, fold, device)
        if not _trained(config, FoldFiles(run_folder(name, config.model) / f"fold_{fold}")):
            return False
    return True


def train_fold(config: TrainConfig, options: TrainOptions, pre: Path, folder: Path) -> FoldResult:
    """One fold, in this process or, with ``gpus > 1``, in ``gpus`` processes (torch.distributed).

    Rank 0 (the only process under ``--gpus N``) holds ``{folder.parent}/.train_{folder.name}.lock`` for the whole
    run; torchrun's other ranks take no lock."""
    files = FoldFiles(folder)
    if launcher_rank() != 0:  # torchrun's other ranks: rank 0 prepares the folder, they only train
        from segvolpipe.training.distributed import launch

        return launch(config, options, pre, folder)
    # in the parent folder: --overwrite removes the fold folder; held through a --gpus N launch (its processes
    # never come here)
    with stage_lock(folder.parent, "train", scope=folder.name):
        remove_stale_temporaries(folder)  # what a killed run was writing
        if not options.overwrite and not options.resume and _trained(config, files):
            from segvolpipe.training.validation import validate_trained_fold

            validated = validate_trained_fold(config, data_splits(config, pre), files, options.progress)
            if validated is not None:
                return FoldResult(config.fold, folder, "validated", *validated)
            logger.info("fold %s is already trained with these settings: %s (--overwrite retrains)", config.fold,
                        folder)
            return FoldResult(config.fold, folder, "skipped")
        if options.overwrite and folder.exists():
            shutil.rmtree(folder)
        if files.latest.exists() and not options.resume and not options.overwrite:
            raise UserError("a run exists here: --resume continues it, --overwrite starts again", folder)
        if options.resume and not files.latest.exists():
            raise UserError("nothing to resume (no checkpoint_latest.pt)", folder)
        if options.resume:
            stored = TrainConfig.from_json(read_json(files.config))
            changed = config.resumable_from(stored)
            if changed:
                raise UserError(f"--resume with other settings than the stored run ({', '.join(changed)})",
                                files.config)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(files.config, config.to_json())
        from segvolpipe.training.distributed import launch, under_torchrun

        if config.gpus > 1 or under_torchrun():
            return launch(config, options, pre, folder)
        return run_fold_process(config, options, pre, folder, Distributed())


def run_fold_process(config: TrainConfig, options: TrainOptions, pre: Path, folder: Path,
                     dist: Distributed) -> FoldResult:
    """Everything one training process does for a fold (rank 0 also writes and validates)."""
    from segvolpipe.training.loader import TrainingLoader, TrainingSource
    from segvolpipe.training.trainer import Trainer, param_groups, prompt_samplers
    from segvolpipe.training.validation import validate_fold

    start = time.perf_counter()
    files = FoldFiles(folder)
    device = torch.device(config.device, dist.rank % max(1, torch.cuda.device_count())) if config.device == "cuda" \
        else torch.device("cpu")
    torch.manual_seed(config.seed)
    spec = config.model
    model = build_model(spec)
    unused = set(model.unused_parameter_names(class_head=config.detail_aux_weight > 0)
                 ) if hasattr(model, "unused_parameter_names") else set()
    for n, p in model.named_parameters():
        if n in unused:
            p.requires_grad_(False)
    init_path, kind = _init_source(config, options)
    if init_path is not None and not options.resume:
        _load_init(model, spec, init_path, kind)
    model.to(device)
    parts = data_parts(config, pre, options.pseudo_masks)
    use_pseudo = any(part.pseudo is not None for part in parts)
    config = replace(config, sampling=replace(config.sampling, pseudo_masks=use_pseudo))
    first, *more = parts
    first_prompts, *more_prompts = prompt_samplers(config)
    loader = TrainingLoader(first.store, first.train, first.sampling, config.seed, config.workers, first.weight,
                            [TrainingSource(p.store, tuple(p.train), p.sampling, p.weight, sampler)
                             for p, sampler in zip(more, more_prompts, strict=True)], first_prompts,
                            pin_memory=device.type == "cuda")
    val_batches = []
    for index, part in enumerate(parts):
        if part.val:
            val_options = replace(part.sampling, augment=False, zoom_out_probability=0.0, pseudo_masks=False)
            val_loader = TrainingLoader(part.store, part.val, val_options, config.seed + 1, 0)
            val_batches += [{**b, "source": torch.tensor(index)} for b in val_loader.epoch(0, config.val_iters)]
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    train_model = model
    if dist.world_size > 1:
        # a batch may use no text prompt (or, for prior on CT, no adapter): parameters can go unused
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.variant != "unet")
    trainer = Trainer(config, model, optimizer, lambda e: loader.epoch(e, config.iters_per_epoch, dist.rank,
                                                                       dist.world_size),
                      val_batches if dist.is_main else [], files, device, dist, options.progress, train_model)
    status = "trained"
    if options.resume:
        payload = load_checkpoint(files.latest)
        check_same_spec(payload, spec.to_json(), files.latest)
        trainer.restore(payload)
        status = "resumed"
    state = trainer.fit()
    result = FoldResult(config.fold, folder, status, state.epoch, state.best_epoch, state.best_ema_dice)
    if dist.is_main:
        result.validation = validate_fold(config, parts, model, files.validation, device, options.progress)
    result.seconds = time.perf_counter() - start
    return result
