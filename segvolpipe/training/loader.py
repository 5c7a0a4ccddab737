"""The training loader: batches of random samples (:mod:`segvolpipe.training.data`), with their prompts, built by
persistent background workers.

A batch is a pure function of ``(seed, epoch, iteration, rank)`` (its samples' generators and its prompt sampler's
are seeded from them), so it does not depend on the number of workers or on what was drawn before: resuming at an
epoch boundary reproduces it, and each rank draws its own shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segvolpipe.errors import UserError
from segvolpipe.training.data import CaseStore, SamplingOptions, make_sample
from segvolpipe.training.prompts import PromptSampler


def _worker_init(worker_id: int) -> None:
    """Keep worker processes to one intra-op thread each (they must not inherit heavy thread pools)."""
    torch.set_num_threads(1)


@dataclass(frozen=True)
class TrainingSource:
    """One dataset's cases for a :class:`TrainingLoader` (a universal model's loader has several).

    Attributes:
        store: The cases.
        case_ids: The training cases (each sample draws one uniformly).
        options: Sampling options (the input size is shared; ``label_mirror`` is the dataset's own).
        weight: Relative share of batches drawn from this source.
        prompts: Draws each batch's prompts in the worker that builds it (promptable models); None for none.
    """

    store: CaseStore
    case_ids: tuple[str, ...]
    options: SamplingOptions
    weight: float = 1.0
    prompts: PromptSampler | None = None


class _Batches(Dataset):
    """Map-style dataset of whole batches keyed by ``(epoch, iteration, rank)``; each batch from one source."""

    def __init__(self, sources: Sequence[TrainingSource], seed: int) -> None:
        self.sources, self.seed = tuple(sources), int(seed)
        self.weights = [s.weight for s in self.sources]

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        from segvolpipe.training.universal import step_source

        epoch, iteration, rank = key
        index = step_source(self.weights, self.seed, epoch, iteration)
        source = self.sources[index]
        samples = []
        for b in range(source.options.batch_size):
            rng = np.random.default_rng([self.seed, epoch, iteration, rank, b])
            case = source.case_ids[int(rng.integers(len(source.case_ids)))]
            samples.append(make_sample(source.store, case, rng, source.options))
        batch = {
            "image": torch.from_numpy(np.stack([s["image"] for s in samples])),
            # the samples' narrow integers (int16 labels, int32 pseudo-mask ids) cross the workers' shared memory and
            # the host-to-device copy as they are: a 3d_segvol batch of two carries 25 MB of them instead of 67 MB
            "label": torch.from_numpy(np.stack([s["label"] for s in samples])),
            "pseudo": torch.from_numpy(np.stack([s["pseudo"] for s in samples])),
            "zoom_out": torch.from_numpy(np.array([bool(s["zoom_out"]) for s in samples])),
            "source": torch.tensor(index, dtype=torch.long),
        }
        if source.prompts is not None:
            pseudo = batch["pseudo"] if source.options.pseudo_masks else None
            drawn = source.prompts(batch["label"], pseudo, epoch, iteration, rank)
            batch.update(prompts=drawn["prompts"], prompt_weights=drawn["weights"], prompt_classes=drawn["classes"])
        return batch


class _Keys(torch.utils.data.Sampler):
    """The keys of one epoch; replaced before each epoch (the loader's workers persist)."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


class TrainingLoader:
    """Batches of random training samples, built by background workers.

    The workers persist across epochs (class locations they compute stay cached). Iterate one epoch at
    a time; call :meth:`close` (or drop the loader) to stop the workers.

    Args:
        store: The cases.
        case_ids: The training cases (each sample draws one uniformly).
        options: Sampling options.
        seed: Base seed.
        workers: Background processes; 0 builds batches in the calling process.
        more: Further sources (a universal model's other datasets): each batch then comes from one source, drawn
            by :func:`~segvolpipe.training.universal.step_source`, and carries its index as ``source``.
        prompts: The first source's prompt sampler (see :attr:`TrainingSource.prompts`).
        pin_memory: Hand batches over in page-locked memory (for a CUDA device: the trainer's ``non_blocking``
            copies are then asynchronous, as nnU-Net's loader does it).
    """

    def __init__(
        self, store: CaseStore, case_ids: Sequence[str], options: SamplingOptions, seed: int, workers: int = 2,
        weight: float = 1.0, more: Sequence[TrainingSource] = (), prompts: PromptSampler | None = None,
        pin_memory: bool = False,
    ) -> None:
        sources = (TrainingSource(store, tuple(case_ids), options, weight, prompts), *more)
        for source in sources:
            if not source.case_ids:
                raise UserError(f"no training cases in {source.store.folder}")
        self.options, self.seed, self.workers = options, int(seed), int(workers)
        self._keys = _Keys()
        self._loader = DataLoader(
            _Batches(sources, seed),
            batch_size=None,
            sampler=self._keys,
            num_workers=self.workers,
            prefetch_factor=2 if self.workers > 0 else None,
            persistent_workers=self.workers > 0,
            worker_init_fn=_worker_init if self.workers > 0 else None,
            pin_memory=pin_memory,
        )

    def epoch(
        self, epoch: int, iterations: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[dict[str, torch.Tensor]]:
        """The ``iterations`` batches of ``epoch`` for ``rank`` (workers start building them at once).

        The workers are shared: finish (or abandon) one epoch's iterator before asking for the next.

        Returns:
            An iterator of batches:
            ``image`` float32 ``[B, C, Z, Y, X]``, ``label`` int16 ``[B, Z, Y, X]``, ``pseudo`` int32
            ``[B, Z, Y, X]``, ``zoom_out`` bool ``[B]``, ``source`` long scalar (the source's index); with a prompt
            sampler also ``prompts`` (the fields of :class:`~segvolpipe.models.prompt_encoder.Prompts`),
            ``prompt_weights`` and ``prompt_classes`` ``[B, P]``. Sample ``b`` of iteration ``i`` comes from
            ``np.random.default_rng([seed, epoch, i, rank, b])``: each rank draws its own shard of
            samples (cases are drawn from all of ``case_ids`` on every rank).
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self._keys.keys = [(int(epoch), i, int(rank)) for i in range(int(iterations))]
        return iter(self._loader)

    def close(self) -> None:
        """Stop the background workers (a later :meth:`epoch` starts new ones)."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader._iterator = None
