"""``--pretrained FILE``: load SegVol's released weights (or our own) into a promptable model.

Layouts recognised (facts in ``shared/reference/``):

- SegVol's GitHub checkpoint (``SegVol_v1.pth``, ``train.py`` output): ``{'model': state, 'optimizer': …,
  'epoch': …, 'scheduler': …}`` with every key prefixed ``module.`` (DataParallel / DDP);
- the Hugging Face packaging (``pytorch_model.bin``): a flat state dict prefixed ``model.``;
- SegVol's ViT pre-training checkpoint (Lightning): ``{'state_dict': …}`` with ``model.encoder.`` keys
  (image encoder only);
- a flat state dict in this project's names.

The file is read with ``weights_only=True`` (no pickle code runs). Keys are mapped, shapes checked, and
every key is accounted for in one report: loaded, the variant's own new parameters (left as initialised),
SAM's unused 2D mask-prompt leftovers, the CLIP text tower (used only to initialise the label embeddings,
when ``transformers`` and CLIP's tokenizer are available), and anything else missing or unexpected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from segvolpipe.errors import UserError

TEXT_TOWER = "text_encoder.clip_text_model."
SAM_LEFTOVERS = "prompt_encoder.mask_downscaling."
# layers this package adds to SegVol's (zero-initialised or adapters: the loaded model computes SegVol's output)
VARIANT_MARKERS = ("lora_A", "lora_B", "token_adapter.", "context_prior.", "dense_prompt_", "image_detail.")


@dataclass
class LoadReport:
    """What happened to every key of the file and of the model."""

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    new_in_variant: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    text_tower: list[str] = field(default_factory=list)
    text_tower_note: str = ""
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def rows(self) -> list[tuple[str, int, str]]:
        """(what, tensor count, status) for the report table."""
        rows = []
        for part, n in sorted(Counter(k.split(".")[0] for k in self.loaded).items()):
            rows.append((part, n, "loaded"))
        if self.new_in_variant:
            rows.append(("variant's new layers", len(self.new_in_variant), "initialised (not in the file)"))
        if self.leftovers:
            rows.append(("prompt_encoder.mask_downscaling", len(self.leftovers), "skipped: SAM 2D leftover, unused"))
        if self.text_tower:
            rows.append(("CLIP text tower", len(self.text_tower), self.text_tower_note))
        if self.missing:
            rows.append(("missing from the file", len(self.missing), "initialised: " + _preview(self.missing)))
        if self.unexpected:
            rows.append(("unexpected in the file", len(self.unexpected), "skipped: " + _preview(self.unexpected)))
        if self.mismatched:
            shown = ", ".join(f"{k} {tuple(a)}≠{tuple(b)}" for k, a, b in self.mismatched[:3])
            rows.append(("shape mismatch", len(self.mismatched), shown))
        return rows


def _preview(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n})" if len(keys) > n else "")


def read_state_dict(path: Path) -> tuple[dict[str, Tensor], str]:
    """The tensors of a checkpoint file with SegVol's prefixes removed, and the layout's name."""
    if not path.is_file():
        raise UserError("no such checkpoint file", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem, named once
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"not a readable PyTorch checkpoint ({first})", path) from None
    if not isinstance(obj, dict):
        raise UserError(f"a checkpoint must hold a dict of tensors, found {type(obj).__name__}", path)
    if isinstance(obj.get("model"), dict):
        state, layout = obj["model"], "training checkpoint {'model': …}"
    elif isinstance(obj.get("state_dict"), dict):
        state, layout = obj["state_dict"], "Lightning {'state_dict': …}"
    else:
        state, layout = obj, "flat state dict"
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not state:
        raise UserError("the checkpoint holds no tensors", path)
    for prefix, name in (("module.", "SegVol GitHub (module.)"), ("model.encoder.", "SegVol ViT pre-training"),
                         ("model.", "SegVol Hugging Face (model.)")):
        if all(k.startswith(prefix) for k in state):
            replacement = "image_encoder." if prefix == "model.encoder." else ""
            return {replacement + k[len(prefix):]: v for k, v in state.items()}, f"{layout}, {name}"
    return state, layout


def load_pretrained(model: nn.Module, path: Path, clip_tokenizer: Path | None = None) -> LoadReport:
    """Copy the tensors of ``path`` into ``model`` (in place) and say what happened to every key.

    Raises:
        UserError: the file is unreadable, or a tensor's shape differs from the model's (another
            configuration: SegVol's weights need ``-c 3d_segvol`` and one input channel).
    """
    state, layout = read_state_dict(path)
    return load_state(model, state, path, layout, clip_tokenizer)


def load_state(model: nn.Module, state: dict[str, Tensor], path: Path, layout: str,
               clip_tokenizer: Path | None = None) -> LoadReport:
    """:func:`load_pretrained` for tensors already read from ``path`` (in this project's names)."""
    report = LoadReport(str(path), layout)
    own = model.state_dict()
    to_load: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(TEXT_TOWER):
            report.text_tower.append(key)
        elif key.startswith(SAM_LEFTOVERS):
            report.leftovers.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(tensor.shape), tuple(own[key].shape)))
        else:
            to_load[key] = tensor
    if report.mismatched:
        key, got, want = report.mismatched[0]
        raise UserError(f"{len(report.mismatched)} tensors have another shape than this model's, e.g. {key} "
                        f"{got} in the file vs {want} here: the checkpoint is for another configuration "
                        "(SegVol's released weights need -c 3d_segvol and a single-channel dataset)", path)
    for key in own:
        if key in to_load:
            report.loaded.append(key)
        elif any(m in key for m in VARIANT_MARKERS):
            report.new_in_variant.append(key)
        else:
            report.missing.append(key)
    if not to_load:
        raise UserError("no tensor of the checkpoint matches this model (is it a SegVol checkpoint?)", path)
    with torch.no_grad():
        for key, tensor in to_load.items():
            own[key].copy_(tensor.to(own[key].dtype))
    report.text_tower_note = _text_tower(model, state, report, clip_tokenizer)
    return report


def _text_tower(model: nn.Module, state: dict[str, Tensor], report: LoadReport, tokenizer: Path | None) -> str:
    """Initialise learned label embeddings from SegVol's CLIP tower when possible; the report's note."""
    if not report.text_tower:
        return ""
    encoder = getattr(model, "text_encoder", None)
    if encoder is None or not getattr(encoder, "learned", False):
        return "not used: this model's semantic prompts come from its own text tower"
    if tokenizer is None:
        return ("not used: semantic prompts use learned label embeddings (pass CLIP's tokenizer directory, "
                "e.g. SegVol's config/clip, to initialise them from CLIP)")
    from segvolpipe.models.text_towers import TextTowerUnavailable, clip_tower_from_state_dict, template_for

    tower_state = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith(TEXT_TOWER)}
    try:
        tower = clip_tower_from_state_dict(tower_state, tokenizer)
    except TextTowerUnavailable as exc:
        return f"not used: {exc}"
    if tower.dim != encoder.embeddings.weight.shape[1]:
        return f"not used: CLIP gives {tower.dim}-d features, the label embeddings are {encoder.embeddings.weight.shape[1]}-d"
    modality = model.spec.modality
    feats = tower.encode([template_for(modality).format(name) for name in encoder.vocabulary])
    with torch.no_grad():
        encoder.embeddings.weight.copy_(feats)
    return f"label embeddings initialised from CLIP ({len(encoder.vocabulary)} names, {modality} template)"
