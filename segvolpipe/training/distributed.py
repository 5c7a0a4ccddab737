"""Multi-process training with torch.distributed: ``--gpus N`` on one machine, or torchrun across machines.

- ``segvol train --gpus N`` spawns N processes on this machine (NCCL on CUDA, one GPU each; gloo on CPU).
- Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` set) every
  process joins the group torchrun made, so multi-node runs are
  ``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 $(which segvol) train -d 17 --gpus 16``.

Every rank draws its own shard of samples (the loader is keyed by rank), all ranks take the same number of
optimiser steps (decisions such as the time budget are rank 0's, broadcast), and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import torch

from segvolpipe.training.checkpoint import load_checkpoint
from segvolpipe.training.config import TrainConfig
from segvolpipe.training.trainer import Distributed, FoldFiles


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _init_group(config: TrainConfig, rank: int, world_size: int) -> Distributed:
    backend = "nccl" if config.device == "cuda" else "gloo"
    if config.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    torch.distributed.init_process_group(backend, rank=rank, world_size=world_size)
    return Distributed(rank, world_size)


def _worker(rank: int, world_size: int, config_json: dict, options_json: dict, pre: str, folder: str) -> None:
    from segvolpipe.log import setup_logging
    from segvolpipe.training.stage import TrainOptions, run_fold_process

    setup_logging(False)
    config = TrainConfig.from_json(config_json)
    options = TrainOptions(**{k: tuple(v) if k == "folds" else v for k, v in options_json.items()})
    if rank != 0:
        options = dataclasses.replace(options, progress=False)
    dist = _init_group(config, rank, world_size)
    try:
        run_fold_process(config, options, Path(pre), Path(folder), dist)
    finally:
        torch.distributed.destroy_process_group()


def launch(config: TrainConfig, options: object, pre: Path, folder: Path):  # -> FoldResult
    """Run a fold in ``config.gpus`` processes (or join torchrun's group); rank 0's result."""
    from segvolpipe.training.stage import FoldResult, run_fold_process

    if under_torchrun():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist = _init_group(config, rank, world)
        try:
            return run_fold_process(config, options, pre, folder, dist)  # type: ignore[arg-type]
        finally:
            torch.distributed.destroy_process_group()
    if config.device == "cuda" and torch.cuda.device_count() < config.gpus:
        from segvolpipe.errors import UserError

        raise UserError(f"--gpus {config.gpus} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    options_json = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}
    torch.multiprocessing.spawn(_worker, args=(config.gpus, config.to_json(), options_json, str(pre), str(folder)),
                                nprocs=config.gpus, join=True)
    files = FoldFiles(folder)
    state = load_checkpoint(files.final)["state"]
    validation = {}
    if (files.validation / "summary.json").exists():
        from segvolpipe.io.atomic import read_json

        validation = {k: v for k, v in read_json(files.validation / "summary.json").items()
                      if isinstance(v, dict) and "foreground_mean" in v}
    return FoldResult(config.fold, folder, "trained", state.epoch, state.best_epoch, state.best_ema_dice, validation,
                      state.elapsed_s)
