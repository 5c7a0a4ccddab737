"""The decoder's convolutional image path: off by default, exact no-op at initialisation, trainable, any grid."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from segvolpipe.models.detail import ImageDetail
from segvolpipe.models.prompt_encoder import Prompts
from segvolpipe.models.registry import build_model
from segvolpipe.models.spec import ModelSpec
from segvolpipe.planning.plans import DecoderPlan
from tests.models.conftest import TINY_DECODER, TINY_VIT, mixed_prompts, tiny_spec


def detail_spec(channels: int = 8, variant: str = "segvol") -> ModelSpec:
    spec = tiny_spec(variant)
    return dataclasses.replace(spec, decoder=dataclasses.replace(TINY_DECODER, image_detail_channels=channels))


def test_plans_without_the_field_mean_no_image_path():
    assert DecoderPlan(64).image_detail_channels == 0
    assert build_model(tiny_spec()).image_detail is None


def test_a_new_image_path_leaves_the_model_output_unchanged(image):
    torch.manual_seed(0)
    plain = build_model(tiny_spec()).eval()
    with_path = build_model(detail_spec()).eval()
    missing, unexpected = with_path.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("image_detail.") for k in missing)
    with torch.no_grad():
        torch.testing.assert_close(with_path(image, mixed_prompts()), plain(image, mixed_prompts()))


def test_the_image_path_learns_and_reaches_the_mask(image):
    torch.manual_seed(0)
    model = build_model(detail_spec())
    prompts = Prompts(text=torch.tensor([[0], [1]]))
    target = (image[:, :1] > 0).float()  # a voxel-wise target the tokens alone cannot draw
    loss_fn = torch.nn.BCEWithLogitsLoss()
    params = list(model.image_detail.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(image, prompts), target)
        loss.backward()
        assert model.image_detail.proj.weight.grad.abs().sum() > 0
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.9 * first


@pytest.mark.parametrize(("input_size", "grid"), [((16, 32, 32), (16, 16, 16)), ((8, 12, 12), (8, 16, 16)),
                                                  ((10, 10, 10), (4, 4, 4))])
def test_any_output_grid(input_size, grid):
    path = ImageDetail(2, 4, 3, input_size, grid)
    torch.nn.init.normal_(path.proj.weight)
    out = path(torch.randn(1, 2, *input_size))
    assert out.shape == (1, 3, *grid) and out.abs().sum() > 0
    assert (path.down is not None) == all(i % g == 0 and i >= g for i, g in zip(input_size, grid, strict=True))


def test_decode_without_the_features_is_refused(image):
    model = build_model(detail_spec()).eval()
    with torch.no_grad():
        emb = model.encode_image(image)
        with pytest.raises(ValueError, match="encode_detail"):
            model.decode(emb, mixed_prompts())
        direct = model.decode(emb, mixed_prompts(), detail=model.encode_detail(image))
        torch.testing.assert_close(direct, model(image, mixed_prompts()))
    assert tuple(model.encode_detail(image).shape[2:]) == tuple(4 * g for g in TINY_VIT.grid)


def test_adapted_variants_freeze_the_image_path_with_the_base():
    model = build_model(detail_spec(variant="so3"))
    assert not any(p.requires_grad for p in model.image_detail.parameters())


def test_the_image_path_trains_at_its_own_peak_on_the_shared_schedule():
    from dataclasses import replace

    from segvolpipe.training.config import TrainConfig
    from segvolpipe.training.data import SamplingOptions
    from segvolpipe.training.prompts import PromptOptions
    from segvolpipe.training.trainer import param_groups

    spec = detail_spec()
    config = TrainConfig("Dataset011_Blobs", "3d_lite", "segvol", "0", spec, 1, 1, 1, 3e-4, 0.0, 0, 1.0,
                         SamplingOptions(input_size=TINY_VIT.input_size, batch_size=1), PromptOptions(max_prompts=2),
                         detail_lr=3e-3)
    model = build_model(spec)
    model.mask_decoder.iou_prediction_head.requires_grad_(False)
    rest, detail = param_groups(model, config)
    assert detail["lr_scale"] == pytest.approx(10.0) and rest["lr_scale"] == 1.0
    assert {id(p) for p in detail["params"]} == {id(p) for p in model.image_detail.parameters()}
    assert len(rest["params"]) + len(detail["params"]) == sum(p.requires_grad for p in model.parameters())
    assert len(param_groups(model, replace(config, detail_lr=None))) == 2
    assert param_groups(model, replace(config, detail_lr=None))[1]["lr_scale"] == 1.0
    assert len(param_groups(build_model(tiny_spec()), config)) == 1
    with pytest.raises(ValueError, match="detail_lr"):
        replace(config, detail_lr=0.0)


def test_the_class_head_is_for_training_and_leaves_the_masks_alone(image):
    torch.manual_seed(0)
    model = build_model(detail_spec()).eval()
    torch.nn.init.normal_(model.image_detail.proj.weight)  # a trained path: its features reach the masks
    with torch.no_grad():
        masks, classes = model(image, mixed_prompts(), with_classes=True)
        torch.testing.assert_close(masks, model(image, mixed_prompts()))
    assert classes.shape == (image.shape[0], len(model.spec.labels) + 1, *(4 * g for g in TINY_VIT.grid))
    head = {n for n, _ in model.named_parameters() if n.startswith("image_detail.classes.")}
    assert head and head <= set(model.unused_parameter_names())
    assert not head & set(model.unused_parameter_names(class_head=True))
    with pytest.raises(ValueError, match="image path"):
        build_model(tiny_spec())(image, mixed_prompts(), with_classes=True)


def test_the_class_head_loss_is_segvols_with_the_path_on_one_dataset_only():
    from dataclasses import replace

    from segvolpipe.training.config import TrainConfig
    from segvolpipe.training.data import SamplingOptions
    from segvolpipe.training.prompts import PromptOptions

    def config(spec: ModelSpec, weight: float) -> TrainConfig:
        return TrainConfig("Dataset011_Blobs", "3d_lite", spec.variant, "0", spec, 1, 1, 1, 3e-4, 0.0, 0, 1.0,
                           SamplingOptions(input_size=TINY_VIT.input_size, batch_size=1),
                           PromptOptions(max_prompts=2), detail_aux_weight=weight)

    assert config(detail_spec(), 0.5).detail_aux_weight == 0.5
    for spec in (tiny_spec(), detail_spec(variant="so3")):
        assert config(spec, 0.0).detail_aux_weight == 0.0
        with pytest.raises(ValueError, match="detail_aux_weight is for segvol"):
            config(spec, 0.5)
    with pytest.raises(ValueError, match="≥ 0"):
        replace(config(detail_spec(), 0.5), detail_aux_weight=-1.0)


def test_levels_stop_before_maps_too_small_for_bf16_gradients():
    from segvolpipe.models.detail import LEVELS, level_strides

    assert level_strides((48, 24, 24)) == [(2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 1, 1)]  # down to 3×3×3
    assert len(level_strides((48, 24, 24))) == LEVELS - 1
    for grid in ((16, 16, 16), (8, 16, 16), (12, 6, 6), (4, 4, 4), (5, 7, 9)):
        size = list(grid)
        for stride in level_strides(grid):
            assert stride != (1, 1, 1)
            size = [n // s for n, s in zip(size, stride, strict=True)]
            assert all(n >= 3 for n, s in zip(size, stride, strict=True) if s == 2)
    assert level_strides((16, 16, 16)) == [(2, 2, 2), (2, 2, 2)]  # 4×4×4 is the last level, not 2×2×2
