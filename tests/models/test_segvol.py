"""The ``segvol`` variant: shapes, gradients, prompt handling, spec round trip."""

from __future__ import annotations

import json

import pytest
import torch

from segvolpipe.models.prompt_encoder import Prompts
from segvolpipe.models.registry import build_model
from segvolpipe.models.spec import ModelSpec, modality_of_channel, normalise_label_name
from tests.models.conftest import TINY_VIT, mixed_prompts, tiny_spec


def test_forward_backward_mixed_prompts(image):
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    logits = model(image, mixed_prompts())
    assert logits.shape == (2, 2, *TINY_VIT.input_size)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    without_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert without_grad == set(model.unused_parameter_names())
    assert model.image_encoder.patch_embedding.patch_embeddings[1].weight.grad.abs().sum() > 0
    assert model.text_encoder.embeddings.weight.grad.abs().sum() > 0


def test_prompts_decoded_together_equal_prompts_decoded_alone(image):
    torch.manual_seed(0)
    model = build_model(tiny_spec()).eval()
    boxes = torch.tensor([[[1, 2, 3, 8, 9, 10], [4, 4, 4, 14, 30, 30], [0, 0, 0, 5, 5, 5]]]).float()
    text = torch.tensor([[0, 2, 1]])
    with torch.no_grad():
        emb = model.encode_image(image[:1])
        together = model.decode(emb, Prompts(text=text, boxes=boxes))
        alone = [model.decode(emb, Prompts(text=text[:, i : i + 1], boxes=boxes[:, i : i + 1])) for i in range(3)]
    torch.testing.assert_close(together, torch.cat(alone, dim=1), rtol=1e-5, atol=1e-5)


def test_each_prompt_kind_changes_the_mask(image):
    torch.manual_seed(0)
    model = build_model(tiny_spec()).eval()
    with torch.no_grad():
        emb = model.encode_image(image[:1])
        text_a = model.decode(emb, Prompts(text=torch.tensor([[0]])))
        text_b = model.decode(emb, Prompts(text=torch.tensor([[1]])))
        box = model.decode(emb, Prompts(text=torch.tensor([[-1]]), boxes=torch.tensor([[[1.0, 2, 3, 8, 9, 10]]])))
        pts = model.decode(emb, Prompts(text=torch.tensor([[-1]]), points=torch.tensor([[[[5.0, 5, 5]]]]),
                                        point_labels=torch.tensor([[[1]]])))
    assert not torch.allclose(text_a, text_b)
    assert not torch.allclose(box, pts)


def test_multimask_returns_every_mask_token(image):
    model = build_model(tiny_spec()).eval()
    with torch.no_grad():
        out = model.decode(model.encode_image(image), mixed_prompts(), multimask=True)
    assert out.shape == (2, 2, model.mask_decoder.num_mask_tokens, *TINY_VIT.input_size)


def test_prompt_validation():
    with pytest.raises(ValueError, match="boxes must be"):
        Prompts(text=torch.zeros(2, 3, dtype=torch.long), boxes=torch.zeros(2, 2, 6))
    with pytest.raises(ValueError, match="go together"):
        Prompts(text=torch.zeros(1, 1, dtype=torch.long), points=torch.zeros(1, 1, 1, 3))
    model = build_model(tiny_spec())
    with pytest.raises(ValueError, match="model input must be"):
        model.encode_image(torch.zeros(1, 1, 8, 8, 8))


def test_label_names_meet_whatever_their_spelling():
    spec = tiny_spec()
    assert normalise_label_name("Left Kidney") == normalise_label_name("left_kidney") == "left kidney"
    assert spec.text_index("LEFT-kidney") == spec.text_index("Left Kidney") == 2
    assert spec.text_index("pancreas") is None
    assert modality_of_channel("CT") == "ct" and modality_of_channel("T2") == "mri"


def test_spec_round_trips_through_json():
    spec = tiny_spec("so3")
    again = ModelSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    with pytest.raises(ValueError, match="unknown field"):
        ModelSpec.from_json({**spec.to_json(), "hiden": 3})


def test_spec_from_plans(roots):
    from segvolpipe.models.spec import spec_from_plans
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess
    from tests.conftest import make_blob_dataset

    make_blob_dataset(roots["raw"], 5, n=3)
    plans = run_plan_preprocess("5", PlanPreprocessOptions(workers=1, progress=False, plan_only=True)).plans
    spec = spec_from_plans(plans, None, "segvol")
    assert spec.configuration == plans.default_configuration
    assert spec.vit == plans.configuration(None).vit
    assert len(spec.labels) == len(plans.labels) - 1 and spec.modality in ("ct", "mri")
