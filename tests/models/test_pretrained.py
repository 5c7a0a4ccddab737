"""``--pretrained``: SegVol's checkpoint layouts (keys and shapes from shared/reference) load with no mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segvolpipe.errors import UserError
from segvolpipe.models.pretrained import load_pretrained, read_state_dict
from segvolpipe.models.registry import build_model
from segvolpipe.models.summary import reference_spec
from tests.models.conftest import tiny_spec

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"


def _reference(name: str) -> dict:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"{path} is not beside the repository")
    return json.loads(path.read_text())


def _zero_state(reference: dict) -> dict[str, torch.Tensor]:
    """Every tensor of SegVol's file with its key, shape and dtype; stride-0 views keep the file tiny."""
    state = {}
    for key, shape in reference["keys"].items():
        dtype = torch.int64 if key in reference["non_float32_dtypes"] else torch.float32
        state[key] = torch.zeros(1, dtype=dtype).expand(shape)
    return state


@pytest.fixture(scope="module")
def segvol_model():
    torch.manual_seed(0)
    return build_model(reference_spec())


@pytest.mark.parametrize(("name", "wrap"), [("segvol_github_state_dict.json", True), ("segvol_hf_state_dict.json", False)])
def test_segvol_release_loads_with_no_shape_mismatch(tmp_path, segvol_model, name, wrap):
    reference = _reference(name)
    state = _zero_state(reference)
    assert len(state) == reference["tensor_count"]["total"] == 475
    obj = {"model": state, "optimizer": {}, "epoch": 3, "scheduler": {}} if wrap else state
    path = tmp_path / "SegVol_v1.pth"
    torch.save(obj, path)

    report = load_pretrained(segvol_model, path)

    counts = reference["tensor_count"]
    loaded_parts = {part: sum(k.startswith(part + ".") for k in report.loaded)
                    for part in ("image_encoder", "prompt_encoder", "mask_decoder", "text_encoder")}
    assert loaded_parts["image_encoder"] == counts["image_encoder"]
    assert loaded_parts["mask_decoder"] == counts["mask_decoder"]
    assert loaded_parts["prompt_encoder"] == counts["prompt_encoder"] - len(report.leftovers) == 7
    assert loaded_parts["text_encoder"] == 2  # dim_align
    assert len(report.text_tower) == counts["text_encoder"] - 2
    assert not report.mismatched and not report.unexpected
    assert report.missing == ["text_encoder.embeddings.weight"]  # learned label embeddings are ours
    assert report.new_in_variant == ["prompt_encoder.dense_prompt_box", "prompt_encoder.dense_prompt_points"]
    assert "learned label embeddings" in report.text_tower_note
    # the weights really were copied: every loaded tensor is now zero
    own = segvol_model.state_dict()
    assert all(float(own[k].abs().max()) == 0.0 for k in report.loaded)


def test_reference_parameter_counts_match_segvol(segvol_model):
    counts = _reference("segvol_github_state_dict.json")["parameter_count"]
    ours = {part: sum(p.numel() for n, p in segvol_model.named_parameters() if n.startswith(part + "."))
            for part in ("image_encoder", "mask_decoder")}
    assert ours == {"image_encoder": counts["image_encoder"], "mask_decoder": counts["mask_decoder"]}


def test_round_trip_of_a_state_dict_saved_in_segvols_layout(tmp_path):
    torch.manual_seed(1)
    source = build_model(tiny_spec())
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()}, "epoch": 1}, tmp_path / "a.pth")
    torch.manual_seed(2)
    target = build_model(tiny_spec())
    report = load_pretrained(target, tmp_path / "a.pth")
    assert not report.missing and not report.unexpected
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_variant_layers_are_reported_as_new(tmp_path):
    torch.save(build_model(tiny_spec()).state_dict(), tmp_path / "base.pt")
    prior = build_model(tiny_spec("prior"))
    report = load_pretrained(prior, tmp_path / "base.pt")
    assert report.new_in_variant and not report.missing
    assert all("lora_" in k or k.startswith("context_prior.") for k in report.new_in_variant)
    assert any(row[0] == "variant's new layers" for row in report.rows())


def test_checkpoint_of_another_configuration_is_one_clear_error(tmp_path, segvol_model):
    torch.save(segvol_model.state_dict(), tmp_path / "big.pt")
    with pytest.raises(UserError, match="another configuration") as info:
        load_pretrained(build_model(tiny_spec()), tmp_path / "big.pt")
    assert "big.pt" in info.value.line()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_or_empty_checkpoint_is_a_user_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        read_state_dict(path)


def test_checkpoint_without_tensors_or_matching_keys(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "none.pt")
    with pytest.raises(UserError, match="no tensors"):
        read_state_dict(tmp_path / "none.pt")
    torch.save({"foo.bar": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no tensor of the checkpoint matches"):
        load_pretrained(build_model(tiny_spec()), tmp_path / "other.pt")
    with pytest.raises(UserError, match="no such checkpoint"):
        read_state_dict(tmp_path / "missing.pt")
