"""The training loop shared by every variant: AdamW, warm-up + cosine, clipping, bf16 autocast (CUDA, native-bf16
CPUs), exact resume.

Batches and prompts are pure functions of (seed, epoch, step, rank), and the checkpoint at the end of each
epoch carries the model, the optimiser, the schedule position and every RNG state, so a run resumed from
``checkpoint_latest.pt`` computes exactly what the uninterrupted run computes. Ctrl-C saves the current
state before exiting (that epoch restarts on resume). Only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segvolpipe.evaluation.metrics import dice_scores
from segvolpipe.io.atomic import atomic_write
from segvolpipe.log import logger, progress_bar
from segvolpipe.models.prompt_encoder import Prompts
from segvolpipe.models.registry import load_model_state
from segvolpipe.models.spec import CT
from segvolpipe.precision import autocast, native_bf16
from segvolpipe.training.checkpoint import TrainState, save_checkpoint, set_rng_state
from segvolpipe.training.config import TrainConfig
from segvolpipe.training.losses import prompt_dice, prompt_loss, unet_loss
from segvolpipe.training.prompts import PromptOptions, PromptSampler, region_targets, sample_prompts


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``base`` to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """AdamW's groups of ``model``'s trainable parameters: the convolutional image path
    (:mod:`segvolpipe.models.detail`) peaks at ``config.detail_lr``, the rest at ``config.lr``; each group's
    ``lr_scale`` is its peak over ``config.lr``, applied to the one warm-up + cosine schedule."""
    detail, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (detail if name.startswith("image_detail.") else rest).append(p)
    groups = [{"params": rest, "lr_scale": 1.0}]
    if detail:
        groups.append({"params": detail, "lr_scale": (config.detail_lr or config.lr) / config.lr})
    return groups


@dataclass
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's decision, on every rank (so all ranks take the same number of steps)."""
        if self.world_size == 1:
            return flag
        return bool(self.share(int(flag), device))

    def share(self, value: int, device: torch.device) -> int:
        """Rank 0's integer, on every rank."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        torch.distributed.broadcast(t, src=0)
        return int(t.item())


@dataclass
class FoldFiles:
    folder: Path

    def __post_init__(self) -> None:
        f = self.folder
        self.config, self.log, self.progress = f / "config.json", f / "training_log.jsonl", f / "progress.png"
        self.latest, self.best, self.final = (f / "checkpoint_latest.pt", f / "checkpoint_best.pt",
                                              f / "checkpoint_final.pt")
        self.validation = f / "validation"


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_dice: float | None
    val_dice_box: float | None
    ema_dice: float | None
    lr: float
    epoch_s: float
    samples_per_s: float
    peak_mib: float
    steps: int = 0  # optimiser steps taken (fewer than iters_per_epoch in an epoch the time budget cut)
    cut: bool = False  # the time budget ran out during the epoch


class Trainer:
    """Runs one fold of one variant (see :func:`segvolpipe.training.stage.run_train`)."""

    def __init__(self, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                 train_batches: Callable[[int], object], val_batches: list[dict[str, Tensor]],
                 files: FoldFiles, device: torch.device, dist: Distributed, progress: bool = True,
                 train_model: nn.Module | None = None) -> None:
        self.config, self.model, self.optimizer = config, model, optimizer
        self.train_model = train_model or model  # the DDP wrapper when distributed
        self.train_batches, self.val_batches = train_batches, val_batches
        self.files, self.device, self.dist, self.progress = files, device, dist, progress
        self.promptable = config.variant != "unet"
        self.sources = prompt_sources(config)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.state = TrainState(total_steps=config.epochs * config.iters_per_epoch)
        self.autocast = autocast(device, config.bf16 and native_bf16(device))

    # -- state ------------------------------------------------------------------------------------------
    def restore(self, payload: dict) -> None:
        """Continue from a loaded checkpoint (see :func:`segvolpipe.training.checkpoint.load_checkpoint`)."""
        load_model_state(self.model, payload["model"])
        if payload["optimizer"] is not None:
            self.optimizer.load_state_dict(payload["optimizer"])
        self.state = payload["state"]
        if self.config.time_budget_s is None:  # --epochs may have changed on resume: the schedule follows
            self.state.total_steps = self.config.epochs * self.config.iters_per_epoch
        set_rng_state(payload["rng"])
        if self.dist.is_main:
            self._drop_log_from(self.state.epoch)

    def _drop_log_from(self, epoch: int) -> None:
        """Remove log lines of epochs ``epoch`` and later: a run killed between logging an epoch and saving its
        checkpoint wrote them, and the resumed run redoes those epochs."""
        if not self.files.log.exists():
            return
        lines = self.files.log.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _log_epoch(line) < epoch]
        if len(kept) != len(lines):
            atomic_write(self.files.log, lambda fh: fh.write("".join(kept).encode()))

    def _save(self, path: Path) -> None:
        if self.dist.is_main:
            save_checkpoint(path, self.model, self.optimizer, self.state, self.config.to_json(),
                            self.config.model.to_json())

    # -- steps ------------------------------------------------------------------------------------------
    def _loss(self, batch: dict) -> Tensor:
        """The loss of one batch; a promptable model's batch carries its prompts (drawn by the loader's
        :class:`~segvolpipe.training.prompts.PromptSampler`), whose targets are built here, on the device."""
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        if not self.promptable:
            with self.autocast():
                out = self.train_model(image)
            return unet_loss(out, label, self.config.model.num_classes)
        classes = batch["prompt_classes"]
        pseudo = batch["pseudo"].to(self.device, non_blocking=True) if bool((classes < 0).any()) else None
        prompts = Prompts(**{k: v.to(self.device, non_blocking=True) for k, v in batch["prompts"].items()})
        targets = region_targets(label, pseudo, classes.to(self.device))
        aux = self.config.detail_aux_weight
        with self.autocast():
            out = self.train_model(image, prompts, with_classes=True) if aux else self.train_model(image, prompts)
        logits, class_logits = out if aux else (out, None)
        loss = prompt_loss(logits.float(), targets, batch["prompt_weights"].to(self.device))
        if class_logits is not None:  # the image path's class head, scored at the input's resolution
            full = F.interpolate(class_logits.float(), size=label.shape[-3:], mode="trilinear", align_corners=False)
            loss = loss + aux * unet_loss(full, label, full.shape[1])
        return loss

    def _step(self, batch: dict) -> float:
        self.train_model.train()
        lr = lr_at(self.state.step, self.state.total_steps, self.config.warmup_steps, self.config.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.state.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> tuple[float | None, float | None]:
        """Mean Dice over the fixed validation batches: text prompts, and box + text (promptable models)."""
        if not self.val_batches:
            return None, None
        self.model.eval()
        text_scores, box_scores = [], []
        for i, batch in enumerate(self.val_batches):
            label = batch["label"]
            image = batch["image"].to(self.device)
            if not self.promptable:
                with self.autocast():
                    pred = self.model(image).float().argmax(1).cpu()
                values = list(range(1, self.config.model.num_classes))
                for b in range(pred.shape[0]):
                    per_class = dice_scores(pred[b].numpy(), label[b].numpy(), values)
                    text_scores += [d for d in per_class.values() if not math.isnan(d)]
                continue
            text_index, modality_value = self.sources[int(batch.get("source", 0))]
            modality = torch.full((label.shape[0],), modality_value, dtype=torch.long)
            for combo, scores in (("text", text_scores), ("box+text", box_scores)):
                options = PromptOptions(max_prompts=len(text_index), box_jitter=0, pseudo_prompts=0,
                                        absent_text_prompts=0, combos=(combo,))
                pb = sample_prompts(label, None, text_index, options, torch.Generator().manual_seed(i), modality)
                with self.autocast():
                    logits = self.model(image, _to_device(pb.prompts, self.device)).float().cpu()
                dice = prompt_dice(logits, pb.targets)
                scores += [float(d) for d, w in zip(dice.flatten(), pb.weights.flatten(), strict=True)
                           if w > 0 and not torch.isnan(d)]
        mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
        return mean(text_scores), mean(box_scores)

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train from ``self.state.epoch`` to the end (or the time budget); returns the final state."""
        cfg, state = self.config, self.state
        budget = cfg.time_budget_s
        try:
            with progress_bar(self.progress and self.dist.is_main) as bar:
                # under a time budget the number of steps is known only once the schedule is fitted to the first epoch
                fitted = budget is None or state.epoch > 0
                task = bar.add_task(f"{cfg.variant} fold {cfg.fold}", total=state.total_steps if fitted else None)
                bar.update(task, completed=state.step)
                while state.epoch * cfg.iters_per_epoch < state.total_steps:
                    record = self._epoch(bar, task)
                    if record.cut:  # the budget ran out inside the epoch: the schedule ends where training did
                        state.total_steps = state.step
                        bar.update(task, total=state.total_steps)
                    self._after_epoch(record)
                    if record.cut:
                        logger.info("time budget reached during epoch %d (%d of %d steps)", record.epoch,
                                    record.steps, cfg.iters_per_epoch)
                        break
                    if budget is not None and state.epoch_s:
                        # refitted after every epoch: the first pays for start-up (workers, caches), and a machine
                        # that was busy early (or becomes busy) would otherwise leave the budget unused (or overrun)
                        total = budget_total_steps(state.epoch, state.elapsed_s, state.epoch_s, budget,
                                                   cfg.iters_per_epoch, cfg.epochs * cfg.iters_per_epoch)
                        state.total_steps = self.dist.share(total, self.device)
                        bar.update(task, total=state.total_steps)
                    out_of_time = budget is not None and state.elapsed_s + (state.epoch_s or 0) > budget * 1.02
                    if self.dist.agree(out_of_time and state.epoch * cfg.iters_per_epoch < state.total_steps,
                                       self.device):
                        logger.info("time budget reached after epoch %d", state.epoch)
                        break
        except KeyboardInterrupt:
            self._save(self.files.latest)
            logger.warning("interrupted: state saved to %s (resume with --resume; epoch %d restarts)",
                           self.files.latest, state.epoch)
            raise
        if self.dist.world_size > 1:
            self.check_ranks_in_sync()
        self._save(self.files.final)
        return state

    def check_ranks_in_sync(self) -> None:
        """Every rank must hold bit-identical weights after DDP training; logged, and an error if not."""
        sums = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).to(self.device)
        gathered = [torch.zeros_like(sums) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(gathered, sums)
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        if self.dist.is_main:
            self._log({"ranks": self.dist.world_size, "ranks_identical": same})
        if not same:
            raise RuntimeError("DDP ranks ended with different weights")

    def _epoch(self, bar: object, task: int) -> EpochRecord:
        cfg, state = self.config, self.state
        start = time.perf_counter()
        losses = []
        steps = min(cfg.iters_per_epoch, state.total_steps - state.epoch * cfg.iters_per_epoch)
        budget_left = None if cfg.time_budget_s is None else cfg.time_budget_s - state.elapsed_s
        cut = False
        for i, batch in enumerate(self.train_batches(state.epoch)):
            if i >= steps:
                break
            losses.append(self._step(batch))
            bar.advance(task)
            # checked after every step, so a budget shorter than an epoch (the first one's length is unknown until
            # it ends) or an epoch slower than the last one stops within a step of the budget; rank 0 decides
            if budget_left is not None and i + 1 < steps and self.dist.agree(
                    time.perf_counter() - start >= budget_left, self.device):
                cut = True
                break
        train_s = time.perf_counter() - start
        steps = len(losses)
        val, val_box = self.validate()
        epoch_s = time.perf_counter() - start
        if val is not None:
            state.ema_dice = val if state.ema_dice is None else (1 - cfg.ema_weight) * state.ema_dice + cfg.ema_weight * val
        state.epoch_s, state.elapsed_s = epoch_s, state.elapsed_s + epoch_s
        state.epoch += 1
        samples = steps * cfg.batch_size * self.dist.world_size
        return EpochRecord(state.epoch - 1, float(np.mean(losses)) if losses else float("nan"), val, val_box,
                           state.ema_dice, self.optimizer.param_groups[0]["lr"], epoch_s, samples / max(train_s, 1e-9),
                           _peak_mib(self.device), steps, cut)

    def _log(self, entry: dict) -> None:
        """Append one JSON line to ``training_log.jsonl`` (the file is rewritten atomically: never half a line)."""
        old = self.files.log.read_bytes() if self.files.log.exists() else b""
        atomic_write(self.files.log, lambda fh: fh.write(old + (json.dumps(entry) + "\n").encode()))

    def _after_epoch(self, record: EpochRecord) -> None:
        state = self.state
        improved = state.ema_dice is not None and (state.best_ema_dice is None or state.ema_dice > state.best_ema_dice)
        if improved:
            state.best_ema_dice, state.best_epoch = state.ema_dice, record.epoch
        if not self.dist.is_main:
            return
        # for a run killed in between: the log line first (a resumed run drops the lines of epochs it redoes), then
        # the best checkpoint, then the latest, so checkpoint_latest.pt never lacks the best epoch it records
        self._log(asdict(record))
        if improved or state.best_ema_dice is None:
            self._save(self.files.best)
        self._save(self.files.latest)
        from segvolpipe.training.plots import plot_progress

        plot_progress(self.files.log, self.files.progress)
        logger.info("epoch %d: loss %.4f, val Dice %s (box+text %s), EMA %s, lr %.2e, %.1f s",
                    record.epoch, record.train_loss, _fmt(record.val_dice), _fmt(record.val_dice_box),
                    _fmt(record.ema_dice), record.lr, record.epoch_s)


def prompt_sources(config: TrainConfig) -> list[tuple[list[int], int]]:
    """Per data source (one, or a universal model's datasets, in loader order): the vocabulary index of each label
    value 1..K and the modality (0 CT, 1 MRI)."""
    spec = config.model
    if config.universal is None:
        return [([spec.text_index(n) for n in spec.labels], 0 if spec.modality == CT else 1)]
    return [(list(s.text_index), 0 if s.modality == CT else 1) for s in config.universal.sources]


def prompt_samplers(config: TrainConfig) -> list[PromptSampler | None]:
    """The loader's prompt sampler of each data source (None for each when the model takes no prompts)."""
    sources = prompt_sources(config)
    if config.variant == "unet":
        return [None] * len(sources)
    return [PromptSampler(config.prompts, tuple(text_index), modality, config.seed)
            for text_index, modality in sources]


def budget_total_steps(epoch: int, elapsed_s: float, epoch_s: float, budget_s: float, iters_per_epoch: int,
                       cap_steps: int) -> int:
    """Optimiser steps of a time-budgeted run, fitted after ``epoch`` epochs took ``elapsed_s`` (the last one
    ``epoch_s``): the epochs done plus as many of the last one's length as the rest of the budget holds, at least
    the epochs done and at most ``cap_steps``."""
    fit = epoch + max(0, int((budget_s - elapsed_s) // epoch_s))
    return min(cap_steps, max(fit, epoch) * iters_per_epoch)


def _log_epoch(line: str) -> float:
    """The epoch of one training-log line; -inf for lines of no epoch (e.g. the DDP check), which are kept."""
    try:
        epoch = json.loads(line).get("epoch")
    except (ValueError, AttributeError):
        return -math.inf
    return epoch if isinstance(epoch, int) else -math.inf


def _peak_mib(device: torch.device) -> float:
    """Peak memory so far: CUDA memory allocated on a GPU, the process's peak RSS on CPU (workers excluded)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _to_device(prompts, device: torch.device):
    from dataclasses import fields, replace

    moved = {f.name: getattr(prompts, f.name) for f in fields(prompts)}
    return replace(prompts, **{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in moved.items()})

