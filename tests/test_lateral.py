"""Left and right: mirroring across the body swaps lateral classes in training and in test-time augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from segvolpipe.inference.sliding import predict_targets, predict_unet
from segvolpipe.inference.windows import TargetPrompt
from segvolpipe.models.spec import lateral_partner, lateral_permutation
from segvolpipe.training.augment import augment, swap_sides


@pytest.mark.parametrize(("name", "partner"), [
    ("Left Kidney", "right kidney"), ("kidney_right", "kidney left"), ("adrenal gland left", "adrenal gland right"),
    ("kidney_l", "kidney r"), ("Lung (L)", "lung r"), ("liver", None), ("l", None), ("lobe", None),
    ("leftover", None),
])
def test_lateral_partner(name: str, partner: str | None) -> None:
    assert lateral_partner(name) == partner


def test_lateral_permutation_pairs_names_whatever_their_spelling() -> None:
    assert lateral_permutation(["liver", "Left_Kidney", "right kidney", "aorta"]) == (0, 2, 1, 3)
    assert lateral_permutation(["Lung (L)", "lung_r", "heart"]) == (1, 0, 2)
    assert lateral_permutation(["left kidney", "spleen"]) is None  # a side without its partner: nothing swaps
    assert lateral_permutation(["liver", "spleen"]) is None


def test_swap_sides_keeps_background_regions_and_ignore() -> None:
    seg = np.array([[0, 1, 2, 3, -1, 7]], dtype=np.float32)
    assert swap_sides(seg, (0, 2, 1, 3)).tolist() == [[0, 2, 1, 3, -1, 7]]


def _sided_volume() -> tuple[np.ndarray, np.ndarray]:
    """An image that brightens towards the right, a 'left' class (1) in the left half, 'right' (2) in the right."""
    z, y, x = 12, 16, 20
    image = np.broadcast_to(np.linspace(-1, 1, x, dtype=np.float32), (1, z, y, x)).copy()
    label = np.zeros((z, y, x), np.int32)
    label[3:9, 4:12, 2:8], label[3:9, 4:12, 12:18] = 1, 2
    return image, label


def test_augmentation_never_puts_the_left_class_on_the_right() -> None:
    image, label = _sided_volume()
    seg = np.stack([label, label])
    flipped_across = 0
    for seed in range(24):
        out_image, out = augment(image, seg, np.random.default_rng(seed), (12, 16, 20), label_mirror=(0, 2, 1))
        across = out_image[0, :, :, 0].mean() > out_image[0, :, :, -1].mean()  # brighter on the left: mirrored
        flipped_across += int(across)
        for channel in out:
            xs = {v: np.nonzero(np.rint(channel) == v)[2].mean() for v in (1, 2)}
            # x grows towards the patient's right in the canonical (S, A, R) layout, mirrored or not: the
            # structure a mirror moved to the right half is, in the image shown, a right one
            assert xs[2] > xs[1]
        plain = augment(image, seg, np.random.default_rng(seed), (12, 16, 20))[1][0]
        xs = {v: np.nonzero(np.rint(plain) == v)[2].mean() for v in (1, 2)}
        assert (xs[2] > xs[1]) != across  # plain mirroring puts 'right' on the left half
    assert 4 < flipped_across < 20  # mirrored in about half of the samples


class SidedUNet(nn.Module):
    """Class logits from position alone: 'left' (1) where x is in the left half, 'right' (2) in the right."""

    input_size = (8, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.spec = SimpleNamespace(label_mirror=lambda: (0, 2, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.linspace(-1, 1, image.shape[-1])
        return torch.stack([torch.zeros_like(x), -x * 5, x * 5]).reshape(1, 3, 1, 1, -1).expand(
            image.shape[0], 3, *image.shape[2:])


def test_unet_mirroring_tta_swaps_the_sides_back() -> None:
    model, image = SidedUNet(), torch.zeros(1, 8, 8, 8)
    plain = predict_unet(model, image)
    tta = predict_unet(model, image, mirror_axes=(0, 1, 2))
    assert torch.allclose(tta, plain, atol=1e-5)


class SidedPrompt(nn.Module):
    """Text 0 ('left thing') → positive in the window's left half, text 1 ('right thing') → right half."""

    promptable = True
    input_size = (4, 6, 8)

    def __init__(self) -> None:
        super().__init__()
        self.spec = SimpleNamespace(vocabulary_mirror=lambda: (1, 0), point_tokens=4)

    def forward(self, image, prompts):
        x = torch.linspace(-1, 1, self.input_size[2])
        sign = torch.where(prompts.text == 1, 1.0, -1.0)  # [B, P]
        return (sign[..., None, None, None] * x * 5).expand(*prompts.text.shape, *self.input_size).clone()


def test_promptable_mirroring_tta_asks_for_the_partner_across_the_body() -> None:
    model, image = SidedPrompt(), torch.zeros(1, 4, 6, 8)
    targets = [TargetPrompt(0), TargetPrompt(1)]
    plain = predict_targets(model, image, targets)
    tta = predict_targets(model, image, targets, mirror_axes=(0, 1, 2))
    assert torch.allclose(tta, plain, atol=1e-5)
    assert (plain[0, ..., :4] > 0).all() and (plain[1, ..., 4:] > 0).all()
    assert TargetPrompt(0).mirrored((2,), (4, 6, 8), (1, 0)).text == 1
    assert TargetPrompt(0).mirrored((0, 1), (4, 6, 8), (1, 0)).text == 0


def _ramps() -> tuple[np.ndarray, np.ndarray]:
    """An image brightening along z, y and x (each ramp a different size), and an empty segmentation."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (12, 16, 20)), indexing="ij")
    return (4 * z + 2 * y + x).astype(np.float32)[None], np.zeros((2, 12, 16, 20), np.float32)


def _flipped(image: np.ndarray) -> tuple[bool, bool, bool]:
    """Which axes of an augmented :func:`_ramps` image now run downhill."""
    return tuple(bool(np.diff(image[0].mean(axis=tuple(b for b in range(3) if b != a))).mean() < 0)
                 for a in range(3))  # type: ignore[return-value]


def test_augmentation_mirrors_only_the_planned_axes() -> None:
    image, seg = _ramps()
    across = [_flipped(augment(image, seg, np.random.default_rng(s), (12, 16, 20), mirror_axes=(2,))[0])
              for s in range(24)]
    assert not any(f[0] or f[1] for f in across)  # never upside down or back to front
    assert 4 < sum(f[2] for f in across) < 20
    everywhere = [_flipped(augment(image, seg, np.random.default_rng(s), (12, 16, 20))[0]) for s in range(24)]
    assert all(4 < sum(f[a] for f in everywhere) < 20 for a in range(3))  # the default: nnU-Net's three axes
    # one draw per axis either way: the samples that flip across the body are the same ones
    assert [f[2] for f in across] == [f[2] for f in everywhere]


def test_plans_mirror_across_the_body_and_older_runs_keep_three_axes() -> None:
    from segvolpipe.config import from_jsonable
    from segvolpipe.planning.plans import TrainerPlan
    from segvolpipe.training.data import SamplingOptions

    assert TrainerPlan(batch_size=2, epochs=1, iters_per_epoch=1).mirror_axes == (2,)
    old = from_jsonable(SamplingOptions, {"input_size": [8, 8, 8], "batch_size": 2})  # a config.json before the field
    assert old.mirror_axes == (0, 1, 2)
    with pytest.raises(ValueError, match="mirror axes"):
        SamplingOptions((8, 8, 8), 2, mirror_axes=(2, 3))
    with pytest.raises(ValueError, match="mirror axes"):  # a hand-edited plans.json: load_plans names the file
        TrainerPlan(batch_size=2, epochs=1, iters_per_epoch=1, mirror_axes=(2, 2))


@pytest.mark.parametrize(("trained", "tta", "flips"), [
    ({"sampling": {"mirror_axes": [2]}}, True, (2,)),
    ({}, True, (0, 1, 2)),  # a checkpoint that does not say: trained before the plans chose, on all three
    ({"sampling": {"mirror_axes": [2]}}, False, ()),
])
def test_tta_flips_only_the_axes_training_mirrored(roots, trained, tta, flips) -> None:
    from segvolpipe.inference.predictor import Predictor
    from segvolpipe.training.checkpoint import load_checkpoint, save_checkpoint
    from tests.conftest import make_blob_dataset, tiny_model_folder

    make_blob_dataset(roots["raw"], 12, n=4, shape=(16, 32, 28))
    folder = tiny_model_folder(roots, "12", "unet")
    path = folder / "fold_0" / "checkpoint_final.pt"
    payload = load_checkpoint(path)
    model = Predictor(folder, mode="sliding").models[0].model
    save_checkpoint(path, model, None, payload["state"], trained, payload["spec"])
    predictor = Predictor(folder, mode="sliding", tta=tta)
    assert predictor.mirror_axes == flips
    assert predictor.describe()["tta_axes"] == list(flips)


def test_tta_on_a_model_that_never_mirrored_says_so_and_predicts_once(roots, caplog) -> None:
    from segvolpipe.inference.predictor import Predictor
    from segvolpipe.log import logger
    from segvolpipe.training.checkpoint import load_checkpoint, save_checkpoint
    from tests.conftest import make_blob_dataset, tiny_model_folder

    make_blob_dataset(roots["raw"], 12, n=4, shape=(16, 32, 28))
    folder = tiny_model_folder(roots, "12", "segvol")
    path = folder / "fold_0" / "checkpoint_final.pt"
    payload = load_checkpoint(path)
    model = Predictor(folder).models[0].model
    save_checkpoint(path, model, None, payload["state"], {"sampling": {"mirror_axes": []}}, payload["spec"])
    logger.addHandler(caplog.handler)  # the package logger does not propagate once the CLI has set it up
    try:
        with caplog.at_level("WARNING", logger="segvolpipe"):
            predictor = Predictor(folder, tta=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert predictor.mirror_axes == () and predictor.describe()["tta"] is False
    assert "mirrored no axis" in caplog.text
