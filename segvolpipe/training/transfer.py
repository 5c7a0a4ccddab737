"""``segvol train --init MODEL`` across datasets (CT → MRI): the spec to train and the weights it starts from.

The transferred model keeps the init model's sizes, so every base tensor loads, and takes the target dataset's
labels and modality. Its vocabulary is the init's followed by the target's names the init does not know: every
name keeps its index, so its text embedding (and the ``prior`` variant's task token) is copied row for row, the
new rows keep their fresh initialisation, and a ``prior`` model computes the init model's outputs bit for bit on
CT prompts. ``--lora`` gives the plain-LoRA baseline: ``segvol`` with always-on adapters on a frozen base, with
the ``prior`` variant's LoRA options so that the two are compared fairly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from segvolpipe.errors import UserError
from segvolpipe.models.pretrained import LoadReport, load_state
from segvolpipe.models.spec import ModelSpec, normalise_label_name
from segvolpipe.training.checkpoint import load_checkpoint

#: Tensors with one row per vocabulary entry (first dimension): the init's rows are copied, new rows kept.
VOCABULARY_ROWS = ("text_encoder.embeddings.weight", "context_prior.task_tokens.weight")
#: Frozen text-tower features ``[modalities, V, dim]``: :func:`~segvolpipe.models.registry.build_model` encodes
#: them for the new vocabulary, so the file's are not loaded.
REENCODED = ("text_encoder.features",)
#: The image path's class head: one output per label value of the dataset it was trained on.
CLASS_HEAD = "image_detail.classes."


@dataclass(frozen=True)
class InitModel:
    """A trained model ``--init`` points to: its checkpoint, spec and dataset (None when not recorded)."""

    path: Path
    spec: ModelSpec
    dataset: str | None


def init_checkpoint(init: str, fold: str) -> Path:
    """The checkpoint ``--init`` names for ``fold``: a results folder (its ``fold_{fold}``, else the folder
    itself) or a file.

    Raises:
        UserError: no ``checkpoint_final.pt`` there.
    """
    path = Path(init)
    if path.is_dir():
        path = path / f"fold_{fold}" / "checkpoint_final.pt" if (path / f"fold_{fold}").is_dir() \
            else path / "checkpoint_final.pt"
    if not path.is_file():
        raise UserError("--init found no checkpoint_final.pt (give a results folder or a checkpoint)", path)
    return path


def read_init(path: Path) -> InitModel:
    """The spec and dataset of a training checkpoint (tensors memory-mapped, not read)."""
    payload = load_checkpoint(path, mmap=True)
    dataset = payload["config"].get("dataset") if isinstance(payload["config"], dict) else None
    return InitModel(path, ModelSpec.from_json(payload["spec"]), dataset)


def crosses_datasets(init: InitModel, target: ModelSpec, dataset: str) -> bool:
    """Whether ``init`` is another dataset's model: other labels, vocabulary or modality than ``target`` (the
    dataset's own spec), or another recorded dataset."""
    own = (init.spec.labels, init.spec.vocabulary, init.spec.modality)
    return own != (target.labels, target.vocabulary, target.modality) or init.dataset not in (None, dataset)


def transfer_spec(init: ModelSpec, target: ModelSpec, variant: str, lora: bool = False) -> ModelSpec:
    """The spec that trains ``variant`` on ``target``'s dataset starting from the ``init`` model.

    Args:
        init: The trained model's spec (sizes, vocabulary and options come from it).
        target: The target dataset's own spec (labels and modality come from it).
        variant: The variant to train.
        lora: ``segvol`` only: LoRA adapters on a frozen base, with ``init.prior.lora``'s options.

    Returns:
        ``init`` with ``target``'s labels and modality, the vocabulary ``init.vocabulary`` + the target's new
        normalised names (in label order), ``variant`` and the LoRA options.

    Raises:
        UserError: the models cannot share weights (channels, U-Net vs promptable, a U-Net's classes), ``lora``
            with another variant, or an init that carries LoRA adapters of its own.
    """
    if init.in_channels != target.in_channels:
        raise UserError(f"--init model takes {init.in_channels} image channel(s), this dataset has "
                        f"{target.in_channels}")
    if (init.variant == "unet") != (variant == "unet"):
        raise UserError(f"--init model is a {init.variant} model: a {variant} model cannot start from it "
                        "(U-Net and promptable models share no weights)")
    if variant == "unet" and init.labels != target.labels:
        raise UserError("a unet --init model must have this dataset's labels (its output layer has one channel per "
                        "class): train a promptable variant to transfer to other labels")
    if lora and variant != "segvol":
        raise UserError(f"--lora is the plain-LoRA segvol baseline; the {variant} variant has its own adapters")
    if init.lora is not None and not lora:
        raise UserError("--init model has LoRA adapters, which this model would drop: add --lora (segvol) or "
                        "start from its base model")
    new = [n for n in dict.fromkeys(normalise_label_name(n) for n in target.labels) if n not in init.vocabulary]
    return replace(init, variant=variant, labels=target.labels, vocabulary=(*init.vocabulary, *new),
                   modality=target.modality, lora=init.prior.lora if lora else None)


def training_spec(target: ModelSpec, dataset: str, init: str | None, fold: str, lora: bool = False,
                  configuration: str | None = None) -> ModelSpec:
    """The spec ``segvol train`` trains: ``target`` (the dataset's own spec), or its :func:`transfer_spec` when
    ``--init`` names another dataset's model or ``lora`` is asked.

    Args:
        target: ``spec_from_plans`` of the dataset for the variant.
        dataset: The dataset's name (``DatasetXXX_Name``).
        init: ``--init`` (a results folder or checkpoint), or None.
        fold: The fold whose ``--init`` checkpoint is read.
        lora: ``--lora``.
        configuration: ``-c`` as given (None: the init model's configuration when it transfers).

    Raises:
        UserError: ``--lora`` without ``--init``, or ``-c`` other than the transferred model's configuration.
    """
    if init is None:
        if lora:
            raise UserError("--lora adapts a trained model: give it with --variant segvol --init CT_MODEL")
        return target
    source = read_init(init_checkpoint(init, fold))
    if not (lora or crosses_datasets(source, target, dataset)):
        return target
    if configuration not in (None, source.spec.configuration):
        raise UserError(f"--init model was trained on configuration {source.spec.configuration!r}, not "
                        f"{configuration!r}: its sizes decide, train with -c {source.spec.configuration} or leave -c out", source.path)
    return transfer_spec(source.spec, target, target.variant, lora)


def is_transfer(spec: ModelSpec, init: ModelSpec) -> bool:
    """Whether ``spec`` is ``init`` transferred (:func:`transfer_spec`) to other labels, vocabulary, modality or
    LoRA adapters, rather than ``init``'s own model or one of its variants."""
    if (spec.labels, spec.vocabulary, spec.modality, spec.lora) == (init.labels, init.vocabulary, init.modality,
                                                                     init.lora):
        return False
    try:
        return spec == transfer_spec(init, spec, spec.variant, spec.lora is not None)
    except UserError:
        return False


def load_transferred(model: nn.Module, path: Path) -> LoadReport:
    """Load the checkpoint ``path`` of the init model into ``model``, built from a :func:`transfer_spec` of it.

    Vocabulary-indexed tensors (:data:`VOCABULARY_ROWS`, ``[V, dim]``) get the init's ``V_init`` rows in their
    first rows and keep their own initialisation in the others; tower features, and the image path's class head
    when the datasets' label counts differ, are left as built; every other
    tensor loads as :func:`~segvolpipe.models.pretrained.load_pretrained` loads it (shapes checked).

    Raises:
        UserError: the checkpoint is unreadable, or ``model``'s vocabulary does not start with the init's.
    """
    payload = load_checkpoint(path)
    init = ModelSpec.from_json(payload["spec"])
    vocabulary = model.spec.vocabulary
    n = len(init.vocabulary)
    if vocabulary[:n] != init.vocabulary:
        raise UserError("the model's vocabulary does not start with the --init model's (was its spec made by "
                        "transfer_spec?)", path)
    own = model.state_dict()
    state = {}
    for key, tensor in payload["model"].items():
        if key.endswith(REENCODED):
            continue
        if key.startswith(CLASS_HEAD) and key in own and tensor.shape != own[key].shape:
            continue  # the image path's class head scores this dataset's label values: it starts afresh
        if key.endswith(VOCABULARY_ROWS) and key in own and tensor.shape[0] == n \
                and own[key].shape == (len(vocabulary), *tensor.shape[1:]):
            rows = own[key].detach().clone()
            rows[:n] = tensor.to(rows.dtype)
            tensor = rows
        state[key] = tensor
    report = load_state(model, state, path, f"segvolpipe checkpoint, vocabulary {n} → {len(vocabulary)} names")
    report.missing = [k for k in report.missing if not k.endswith(REENCODED)]
    return report
