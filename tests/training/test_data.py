"""Training data: case store, samples (crops, foreground oversampling, zoom-out, padding), augmentation, loader."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segvolpipe.errors import UserError
from segvolpipe.training.augment import (
    WIDE_ROTATION,
    RotateScaleCrop,
    RotationRange,
    augment,
    batchgenerators_spatial,
    rotation_range,
    source_size,
)
from segvolpipe.training.data import CaseStore, SamplingOptions, make_sample
from segvolpipe.training.loader import TrainingLoader
from segvolpipe.training.prompts import PromptOptions, PromptSampler, region_targets, sample_prompts

SHAPE = (20, 40, 36)
SMALL = (10, 20, 18)
INPUT = (16, 24, 24)
K = 2  # label classes


def _write_case(folder: Path, pseudo_folder: Path, case: str, label: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = np.stack(
        [label * 1.5 + rng.normal(0, 0.1, label.shape), -label + rng.normal(0, 0.1, label.shape)]
    )
    pseudo = label.astype(np.int32)
    pseudo[(label == 0) & (np.arange(label.shape[2]) < label.shape[2] // 3)] = K + 1  # a pseudo region
    pseudo[(label == 0) & (np.arange(label.shape[1])[:, None] < 3)] = K + 2  # another
    pseudo[0] = -1  # ignore
    np.save(folder / f"{case}.npy", image.astype(np.float32))
    np.save(folder / f"{case}_seg.npy", label.astype(np.int8))
    np.save(pseudo_folder / f"{case}.npy", pseudo)


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Cases ``a``, ``b`` (two blobs), ``tiny`` (8 foreground voxels in a corner), ``small`` (< input)."""
    folder, pseudo_folder = tmp_path / "3d_lite", tmp_path / "pseudomasks" / "3d_lite"
    folder.mkdir()
    pseudo_folder.mkdir(parents=True)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    for i, case in enumerate(("a", "b")):
        label = np.zeros(SHAPE, np.int8)
        label[((zz - 10) / 6) ** 2 + ((yy - 20 - 3 * i) / 12) ** 2 + ((xx - 18) / 10) ** 2 < 1] = 1
        label[((zz - 8) / 3) ** 2 + ((yy - 12) / 4) ** 2 + ((xx - 26 + i) / 4) ** 2 < 1] = 2
        _write_case(folder, pseudo_folder, case, label, i)
    tiny = np.zeros(SHAPE, np.int8)
    tiny[1:3, 2:4, 2:4] = 1
    _write_case(folder, pseudo_folder, "tiny", tiny, 7)
    small = np.zeros(SMALL, np.int8)
    small[3:7, 5:15, 4:14] = 1
    _write_case(folder, pseudo_folder, "small", small, 8)
    return folder, pseudo_folder


def _store(dataset: tuple[Path, Path], cases: tuple[str, ...] = ("a", "b", "tiny", "small")) -> CaseStore:
    return CaseStore(dataset[0], cases, dataset[1])


def _options(**kw: object) -> SamplingOptions:
    return SamplingOptions(input_size=INPUT, **{"batch_size": 2, **kw})  # type: ignore[arg-type]


def test_batches_shapes_dtypes_and_labels_travel_with_pseudo(dataset: tuple[Path, Path]) -> None:
    store = _store(dataset)
    loader = TrainingLoader(
        store, store.case_ids, _options(batch_size=3, rotation_aug=True), seed=0, workers=0
    )
    for batch in loader.epoch(0, 4):
        assert batch["image"].shape == (3, 2, *INPUT) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (3, *INPUT) and batch["label"].dtype == torch.int16
        assert batch["pseudo"].shape == (3, *INPUT) and batch["pseudo"].dtype == torch.int32
        assert batch["zoom_out"].shape == (3,) and batch["zoom_out"].dtype == torch.bool
        label, pseudo = batch["label"].numpy(), batch["pseudo"].numpy()
        assert set(np.unique(label)) <= {0, 1, 2}  # never an interpolated label
        assert set(np.unique(pseudo)) <= {-1, 0, 1, 2, K + 1, K + 2}
        assert np.array_equal(pseudo[label > 0], label[label > 0])
        is_class = (pseudo >= 1) & (pseudo <= K)
        assert np.array_equal(label[is_class], pseudo[is_class])
        assert np.isfinite(batch["image"].numpy()).all()


def test_augment_keeps_label_and_pseudo_aligned_under_wide_rotation(dataset: tuple[Path, Path]) -> None:
    store = _store(dataset, ("a",))
    label = np.asarray(store.label("a"), np.int32)
    pseudo = np.asarray(store.pseudo("a"), np.int32)
    for seed in range(6):
        _, seg = augment(
            np.asarray(store.image("a")), np.stack([label, pseudo]), np.random.default_rng(seed), INPUT, True
        )
        lab, pse = seg[0].astype(int), seg[1].astype(int)
        assert set(np.unique(lab)) <= {0, 1, 2} and np.array_equal(pse[lab > 0], lab[lab > 0])


def test_batches_are_a_pure_function_of_seed_epoch_iteration_rank(dataset: tuple[Path, Path]) -> None:
    store = _store(dataset)
    options = _options()
    inline = TrainingLoader(store, store.case_ids, options, seed=5, workers=0)
    background = TrainingLoader(store, store.case_ids, options, seed=5, workers=2)
    try:
        seen = [list(background.epoch(e, 3)) for e in range(3)]  # epochs 0-2, then a "resume" at epoch 3
        resumed = list(background.epoch(3, 3))
    finally:
        background.close()
    fresh = TrainingLoader(store, store.case_ids, options, seed=5, workers=0)

    def same(x: list[dict[str, torch.Tensor]], y: list[dict[str, torch.Tensor]]) -> bool:
        return len(x) == len(y) and all(torch.equal(p[k], q[k]) for p, q in zip(x, y, strict=True) for k in p)

    assert same(seen[1], list(inline.epoch(1, 3)))  # workers 2 == workers 0
    assert same(resumed, list(fresh.epoch(3, 3)))  # after epochs 0-2 == computed fresh
    assert not same(seen[0], seen[1])  # another epoch
    assert not same(list(inline.epoch(1, 3, rank=1, world_size=2)), seen[1])  # another rank
    assert not same(
        list(TrainingLoader(store, store.case_ids, options, seed=6, workers=0).epoch(1, 3)), seen[1]
    )
    with pytest.raises(ValueError):
        inline.epoch(0, 1, rank=2, world_size=2)


def _flat(batch: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "prompts"} | {f"prompts.{k}": v for k, v in batch["prompts"].items()}


def test_prompts_drawn_in_the_workers_are_those_the_trainer_drew_in_process(dataset: tuple[Path, Path]) -> None:
    """The loader's workers draw each batch's prompts from (seed, epoch, step, rank): the same whatever the worker
    count, and exactly what ``sample_prompts`` gives in the training process with that generator; the trainer's
    targets built from the rows' classes equal the masks ``sample_prompts`` builds."""
    store = _store(dataset)
    options = _options(batch_size=2)
    sampler = PromptSampler(PromptOptions(max_prompts=4, pseudo_prompts=1), (3, 1), 1, seed=5)
    inline = TrainingLoader(store, store.case_ids, options, seed=5, workers=0, prompts=sampler)
    background = TrainingLoader(store, store.case_ids, options, seed=5, workers=2, prompts=sampler)
    try:
        seen = list(background.epoch(1, 3))
    finally:
        background.close()
    for a, b in zip(seen, inline.epoch(1, 3), strict=True):
        a, b = _flat(a), _flat(b)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pseudo_rows = 0
    for step, batch in enumerate(seen):
        expected = sample_prompts(batch["label"], batch["pseudo"], (3, 1), sampler.options,
                                  sampler.generator(1, step, 0), torch.full((2,), 1))
        for name, value in batch["prompts"].items():
            assert torch.equal(value, getattr(expected.prompts, name)), name
        assert torch.equal(batch["prompt_classes"], expected.classes)
        assert torch.equal(batch["prompt_weights"], expected.weights)
        targets = region_targets(batch["label"], batch["pseudo"], batch["prompt_classes"])
        assert torch.equal(targets, expected.targets)
        pseudo_rows += int((batch["prompt_classes"] < 0).sum())
    assert pseudo_rows > 0  # pseudo-region prompts were drawn, and their targets compared too


def test_mirror_only_augmentation_is_the_crop_or_its_mirror_with_the_sides_swapped(dataset: tuple[Path, Path]) -> None:
    store = _store(dataset, ("a", "b"))
    options = _options(zoom_out_probability=0.0, transforms=False, label_mirror=(0, 2, 1), mirror_axes=(2,))
    flipped = 0
    for seed in range(16):
        case = ("a", "b")[seed % 2]
        sample = make_sample(store, case, np.random.default_rng(seed), options)
        crop = make_sample(store, case, np.random.default_rng(seed), replace(options, augment=False))
        if np.array_equal(sample["image"], crop["image"]):
            np.testing.assert_array_equal(sample["label"], crop["label"])
            continue
        flipped += 1
        np.testing.assert_array_equal(sample["image"], crop["image"][..., ::-1])
        np.testing.assert_array_equal(sample["label"], np.array([0, 2, 1], np.int16)[crop["label"][..., ::-1]])
    assert 0 < flipped < 16


def test_foreground_oversampling(dataset: tuple[Path, Path]) -> None:
    store = _store(dataset, ("tiny",))
    always = _options(oversample_foreground=1.0, zoom_out_probability=0.0, augment=False)
    never = _options(oversample_foreground=0.0, zoom_out_probability=0.0, augment=False)
    rngs = [np.random.default_rng(s) for s in range(40)]
    assert all((make_sample(store, "tiny", r, always)["label"] > 0).any() for r in rngs)
    rngs = [np.random.default_rng(s) for s in range(40)]
    assert not all((make_sample(store, "tiny", r, never)["label"] > 0).any() for r in rngs)


def test_without_pseudo_masks_a_sample_is_the_same_draw_with_a_zero_pseudo_map(dataset: tuple[Path, Path]) -> None:
    """With pseudo-masks off only the label is augmented (no all-zero channel resampled); the random draws, and so
    the image and label, are those of the same sample with pseudo-masks on."""
    store = _store(dataset, ("a", "b"))
    moved = 0
    for seed in range(12):
        case = ("a", "b")[seed % 2]
        options = _options(zoom_out_probability=0.0, rotation_aug=True)
        on = make_sample(store, case, np.random.default_rng(seed), options)
        off = make_sample(store, case, np.random.default_rng(seed), replace(options, pseudo_masks=False))
        np.testing.assert_array_equal(off["image"], on["image"])
        np.testing.assert_array_equal(off["label"], on["label"])
        assert off["pseudo"].dtype == np.int32 and off["pseudo"].shape == INPUT and not off["pseudo"].any()
        assert on["pseudo"].any()
        crop = make_sample(store, case, np.random.default_rng(seed), replace(options, augment=False))
        moved += not np.array_equal(on["label"], crop["label"])
    assert moved > 0  # some samples were rotated, scaled or mirrored


def test_zoom_out_is_the_whole_case_resized(dataset: tuple[Path, Path]) -> None:
    store = _store(dataset, ("a",))
    sample = make_sample(
        store, "a", np.random.default_rng(0), _options(zoom_out_probability=1.0, augment=False)
    )
    assert bool(sample["zoom_out"])
    case_label = np.asarray(store.label("a"))
    for value in (1, 2):
        assert (sample["label"] == value).mean() == pytest.approx((case_label == value).mean(), rel=0.15)
    expected = F.interpolate(
        torch.from_numpy(np.array(store.image("a")))[None], size=INPUT, mode="trilinear"
    )[0]
    np.testing.assert_allclose(sample["image"], expected.numpy(), rtol=1e-6, atol=1e-6)
    lab, pse = sample["label"], sample["pseudo"]
    assert np.array_equal(pse[lab > 0], lab[lab > 0])  # the pseudo-mask is resized on the same grid
    assert set(np.unique(sample["pseudo"])) <= {-1, 0, 1, 2, K + 1, K + 2}


def test_case_smaller_than_input_is_padded(dataset: tuple[Path, Path]) -> None:
    store = _store(dataset, ("small",))
    options = _options(oversample_foreground=0.0, zoom_out_probability=0.0, augment=False)
    sample = make_sample(store, "small", np.random.default_rng(0), options)
    assert sample["image"].shape == (2, *INPUT) and sample["label"].shape == INPUT
    offset = [(n - d) // 2 for n, d in zip(INPUT, SMALL, strict=True)]
    inner = tuple(slice(o, o + d) for o, d in zip(offset, SMALL, strict=True))
    np.testing.assert_array_equal(sample["image"][(slice(None), *inner)], store.image("small"))
    np.testing.assert_array_equal(sample["label"][inner], store.label("small"))
    np.testing.assert_array_equal(sample["pseudo"][inner], store.pseudo("small"))
    outside = np.ones(INPUT, bool)
    outside[inner] = False
    for c, minimum in enumerate(np.asarray(store.image("small")).reshape(2, -1).min(axis=1)):
        assert np.all(sample["image"][c][outside] == minimum)
    assert not sample["label"][outside].any() and not sample["pseudo"][outside].any()
    augmented = make_sample(store, "small", np.random.default_rng(1), _options(zoom_out_probability=0.0))
    assert augmented["image"].shape == (2, *INPUT)


def test_rotation_aug_turns_about_the_longitudinal_axis_0() -> None:
    """batchgenerators' ``angle_x`` keeps each axial slice's mass in its slice; ``angle_y``/``angle_z`` do not."""
    size = (20, 40, 40)
    along_x, along_y = np.zeros(size, np.float32), np.zeros(size, np.float32)
    along_x[6:10, 18:22, 4:36] = 1
    along_y[6:10, 4:36, 18:22] = 1

    def rotate(volume: np.ndarray, rotation: RotationRange) -> np.ndarray:
        np.random.seed(0)
        vol = volume[None, None].copy()
        return RotateScaleCrop(size, rotation, scale_probability=0.0)(data=vol, seg=vol.copy())["seg"][0, 0]

    a = np.pi / 3
    for bar in (along_x, along_y):
        out = rotate(bar, RotationRange(a, 0.0, 0.0, 1.0))
        assert out[:6].sum() == 0 and out[10:].sum() == 0  # nothing moved along axis 0
        assert not np.array_equal(out.sum(axis=0) > 0, bar.sum(axis=0) > 0)  # but it did turn in-plane
    assert rotate(along_x, RotationRange(0.0, a, 0.0, 1.0))[10:].sum() > 0  # angle_y tilts out of the slices
    assert rotate(along_y, RotationRange(0.0, 0.0, a, 1.0))[10:].sum() > 0  # angle_z too
    assert rotation_range(True) == WIDE_ROTATION and WIDE_ROTATION.about_axis0 == pytest.approx(np.pi / 2)
    assert WIDE_ROTATION.angles()[0] == (-np.pi / 2, np.pi / 2) and WIDE_ROTATION.angles()[1] == (-0.1, 0.1)


@pytest.mark.parametrize("wide", [False, True])
def test_rotate_scale_crop_is_batchgenerators_spatial_transform_resampled_with_torch(wide: bool) -> None:
    """Same draws from numpy's global stream (what follows sees the same numbers), the same centre crop when nothing
    moves, and within float32 rounding of batchgenerators' map_coordinates when the sample turns or scales."""
    size = (12, 24, 20)
    block = source_size(size, wide)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in block), indexing="ij")
    data = np.stack([np.sin(3 * zz) + np.cos(4 * yy) * xx, rng.normal(size=block)]).astype(np.float32)[None]
    seg = np.stack([(zz**2 + yy**2 + xx**2 < 0.5) + (np.abs(xx - 0.3) < 0.1) * 2.0,
                    rng.integers(-1, 40, block)]).astype(np.float32)[None]
    rotation = rotation_range(wide)
    ours, reference = RotateScaleCrop(size, rotation, 0.5), batchgenerators_spatial(size, rotation, 0.5)
    moved = kept = 0
    for seed in range(24):
        outs = []
        for transform in (ours, reference):
            np.random.seed(seed)
            out = transform(data=data.copy(), seg=seg.copy())
            outs.append((out["data"], out["seg"], np.random.random()))
        (a, a_seg, a_next), (b, b_seg, b_next) = outs
        assert a.dtype == a_seg.dtype == np.float32 and a.shape == (1, 2, *size) and a_seg.shape == (1, 2, *size)
        assert a_next == b_next  # the same numbers were drawn
        if np.array_equal(a, b) and np.array_equal(a_seg, b_seg):
            kept += 1
            continue
        moved += 1
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert (a_seg == b_seg).mean() > 0.999 and set(np.unique(a_seg)) <= set(np.unique(seg))
    assert moved >= 5 and kept >= 3


def test_source_size_leaves_room_for_rotation() -> None:
    for wide in (False, True):
        block = source_size(INPUT, wide)
        assert all(b >= n and (b - n) % 2 == 0 for b, n in zip(block, INPUT, strict=True))
    assert source_size(INPUT, True)[1] > source_size(INPUT, False)[1]


def test_class_locations(dataset: tuple[Path, Path]) -> None:
    store = _store(dataset, ("a", "tiny"))
    locations = store.class_locations("a")
    label = np.asarray(store.label("a"))
    assert sorted(locations) == [1, 2]
    for value, voxels in locations.items():
        assert voxels.shape == ((label == value).sum(), 3)
        assert (label[tuple(voxels.T)] == value).all()
    assert store.class_locations("a") is locations  # cached
    assert list(store.class_locations("tiny")) == [1]


def test_case_store_errors(dataset: tuple[Path, Path]) -> None:
    folder, pseudo_folder = dataset
    (folder / "b_seg.npy").unlink()
    with pytest.raises(UserError) as info:
        CaseStore(folder, ["a", "b"], pseudo_folder)
    assert info.value.path is not None and info.value.path.endswith("b_seg.npy")
    np.save(folder / "b_seg.npy", np.zeros((20, 40, 35), np.int8))
    with pytest.raises(UserError, match="does not match"):
        CaseStore(folder, ["b"])
    np.save(pseudo_folder / "a.npy", np.zeros((1, 2), np.int32))
    with pytest.raises(UserError) as info:
        CaseStore(folder, ["a"], pseudo_folder)
    assert info.value.path is not None and info.value.path.endswith("a.npy")
    (folder / "tiny.npy").write_bytes(b"not an array")
    with pytest.raises(UserError, match="unreadable"):
        CaseStore(folder, ["tiny"])


def test_pseudo_is_zero_when_disabled_or_absent(dataset: tuple[Path, Path]) -> None:
    options = _options(pseudo_masks=False, oversample_foreground=1.0)
    sample = make_sample(_store(dataset, ("a",)), "a", np.random.default_rng(0), options)
    assert sample["pseudo"].dtype == np.int32 and not sample["pseudo"].any()
    without = CaseStore(dataset[0], ["a"])
    assert without.pseudo("a") is None
    assert not make_sample(without, "a", np.random.default_rng(0), _options())["pseudo"].any()
