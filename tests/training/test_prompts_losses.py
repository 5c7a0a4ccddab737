"""Training prompts (:mod:`segvolpipe.training.prompts`) and losses (:mod:`segvolpipe.training.losses`)."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from segvolpipe.models.registry import build_model
from segvolpipe.training.losses import prompt_dice, prompt_loss, unet_loss
from segvolpipe.training.prompts import (
    COMBOS,
    NEGATIVE_MARGIN,
    PSEUDO_COMBOS,
    PromptBatch,
    PromptOptions,
    region_targets,
    sample_prompts,
)
from tests.models.conftest import TINY_VIT, tiny_spec

SHAPE = (16, 20, 24)
TEXT_INDEX = [7, 3, 5, 9]  # label values 1..4; value 4 is never drawn (always absent)


def _ball(center: tuple[int, int, int], radius: float, shape: tuple[int, int, int] = SHAPE) -> torch.Tensor:
    zz, yy, xx = torch.meshgrid(*(torch.arange(s) for s in shape), indexing="ij")
    return (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= radius**2


def _volumes() -> tuple[torch.Tensor, torch.Tensor]:
    """Two crops: classes {1, 2, 3} and {2}; pseudo regions 5, 6 (large), 7 (tiny) and an ignore slab."""
    label = torch.zeros(2, *SHAPE, dtype=torch.long)
    label[0][_ball((4, 5, 6), 3)] = 1
    label[0][_ball((10, 14, 16), 4)] = 2
    label[0][_ball((12, 4, 20), 2)] = 3
    label[1][_ball((8, 10, 12), 5)] = 2
    pseudo = torch.zeros_like(label)
    pseudo[:, :, :10, :] = 5
    pseudo[:, :, 10:, :12] = 6
    pseudo[:, 0, 0, :3] = 7  # 3 voxels: below min_region_voxels
    pseudo[:, -1] = -1
    pseudo = torch.where(label > 0, label, pseudo)
    return label, pseudo


def _sample(seed: int = 0, pseudo: bool = True, **options) -> tuple[PromptBatch, torch.Tensor, torch.Tensor]:
    label, pse = _volumes()
    options = {"max_prompts": 7, "max_positive_points": 4, "max_negative_points": 3, **options}
    batch = sample_prompts(label, pse if pseudo else None, TEXT_INDEX, PromptOptions(**options),
                           torch.Generator().manual_seed(seed))
    return batch, label, pse


def _rows(batch: PromptBatch):
    b, p = batch.weights.shape
    for i in range(b):
        for r in range(p):
            yield i, r, int(batch.classes[i, r]), batch.combos[i][r]


def _tight_box(mask: torch.Tensor) -> torch.Tensor:
    coords = torch.nonzero(mask)
    return torch.cat([coords.amin(0), coords.amax(0)]).float()


@pytest.mark.parametrize("seed", range(6))
def test_targets_weights_and_padding(seed):
    batch, label, pse = _sample(seed)
    pr = batch.prompts
    n = 4 + 3
    assert batch.targets.shape == (2, 7, *SHAPE) and batch.targets.dtype == torch.float32
    assert pr.points.shape == (2, 7, n, 3) and pr.point_labels.shape == (2, 7, n) and pr.boxes.shape == (2, 7, 6)
    for i, r, cls, combo in _rows(batch):
        target, w = batch.targets[i, r], float(batch.weights[i, r])
        if cls > 0:
            assert w == 1.0 and torch.equal(target, (label[i] == cls).float())
            assert combo in COMBOS
            if "text" in combo:
                assert int(pr.text[i, r]) == TEXT_INDEX[cls - 1]
        elif cls < 0:
            assert w == pytest.approx(0.1) and combo in PSEUDO_COMBOS and int(pr.text[i, r]) == -1
            assert torch.equal(target, (pse[i] == -cls).float()) and -cls in (5, 6)
        else:
            assert w == 0 and combo == "" and not target.any()
            assert int(pr.text[i, r]) == -1 and not pr.box_mask[i, r] and (pr.point_labels[i, r] == -1).all()
        if w > 0:  # something visible
            assert int(pr.text[i, r]) >= 0 or bool(pr.box_mask[i, r]) or bool((pr.point_labels[i, r] == 1).any())
        assert (int(pr.text[i, r]) >= 0) == ("text" in combo)
        assert bool(pr.box_mask[i, r]) == ("box" in combo)
        assert bool((pr.point_labels[i, r] >= 0).any()) == ("points" in combo)
        if "box" not in combo:
            assert not pr.boxes[i, r].any()


def test_class_prompts_cover_present_classes_then_absent_then_pseudo():
    batch, label, _ = _sample(0, absent_text_prompts=1, pseudo_prompts=2)
    for i in range(2):
        present = set(torch.unique(label[i]).tolist()) - {0}
        cls = batch.classes[i].tolist()
        k = len(present)
        assert set(cls[:k]) == present
        assert cls[k] in set(range(1, 5)) - present and batch.combos[i][k] == "text"
        assert not batch.targets[i, k].any()
        assert sorted(cls[k + 1 : k + 3]) == [-6, -5]  # region 7 is too small
        assert cls[k + 3 :] == [0] * (7 - k - 3)


def test_budget_smaller_than_present_classes_takes_a_random_subset():
    seen = set()
    for seed in range(12):
        batch, label, _ = _sample(seed, max_prompts=2)
        cls = batch.classes[0].tolist()
        assert len(set(cls)) == 2 and set(cls) <= {1, 2, 3}
        assert (batch.weights[0] == 1).all()
        seen.add(tuple(sorted(cls)))
    assert len(seen) > 1


@pytest.mark.parametrize("jitter", [0, 3])
def test_boxes_tight_or_within_jitter(jitter):
    checked = 0
    for seed in range(5):
        batch, label, pse = _sample(seed, box_jitter=jitter, combos=("box",))
        for i, r, cls, _ in _rows(batch):
            if cls == 0:
                continue
            mask = label[i] == cls if cls > 0 else pse[i] == -cls
            box, tight = batch.prompts.boxes[i, r], _tight_box(mask)
            if jitter == 0:
                assert torch.equal(box, tight)
            else:
                assert (box - tight).abs().max() <= jitter
            upper = torch.tensor(SHAPE * 2) - 1
            assert (box >= 0).all() and (box <= upper).all() and (box[:3] <= box[3:]).all()
            checked += 1
    assert checked > 10


def test_points_positive_inside_negative_outside():
    counts = set()
    for seed in range(8):
        batch, label, pse = _sample(seed, combos=("points",))
        for i, r, cls, _ in _rows(batch):
            if cls == 0:
                continue
            mask = label[i] == cls if cls > 0 else pse[i] == -cls
            lab, pts = batch.prompts.point_labels[i, r], batch.prompts.points[i, r].long()
            pos, neg = int((lab == 1).sum()), int((lab == 0).sum())
            assert 1 <= pos <= 4 and 0 <= neg <= 3
            assert (lab[:pos] == 1).all() and (lab[pos : pos + neg] == 0).all() and (lab[pos + neg :] == -1).all()
            inside = mask[pts[:, 0], pts[:, 1], pts[:, 2]]
            assert inside[:pos].all() and not inside[pos : pos + neg].any()
            tight = _tight_box(mask)
            grown = pts[pos : pos + neg].float()
            assert (grown >= tight[:3] - NEGATIVE_MARGIN).all() and (grown <= tight[3:] + NEGATIVE_MARGIN).all()
            counts.add((pos, neg))
    assert len(counts) > 5


def test_combos_respect_options_and_text_switch():
    for seed in range(6):
        batch, _, _ = _sample(seed, combos=("box+text", "points"))
        used = {c for row in batch.combos for c in row} - {""}
        assert used <= {"box+text", "points"}  # no absent-class prompts: "text" itself is not allowed
        batch, _, _ = _sample(seed, text=False)
        assert (batch.prompts.text == -1).all()
        assert all("text" not in c for row in batch.combos for c in row)
        assert (batch.weights > 0).sum() > 0
        batch, _, _ = _sample(seed, combos=("text",))
        assert set(batch.combos[0]) <= {"text", ""} and (batch.classes >= 0).all()  # no text-free pseudo combo


def test_small_regions_and_no_pseudo():
    for seed in range(6):
        batch, _, _ = _sample(seed, pseudo_prompts=5)
        assert -7 not in batch.classes.tolist()[0]
        batch, _, _ = _sample(seed, pseudo=False)
        assert (batch.classes >= 0).all()


def test_thin_and_filling_targets():
    label = torch.zeros(1, *SHAPE, dtype=torch.long)
    idx = torch.arange(16)
    label[0, idx, idx, idx] = 1  # a diagonal line: rejection sampling in its box mostly misses
    label[0, 0, 0, 23] = 2
    full = torch.ones(1, *SHAPE, dtype=torch.long)  # fills the crop: no voxel for a negative
    for seed in range(4):
        options = PromptOptions(max_prompts=3, combos=("box+points",), max_negative_points=5, box_jitter=0)
        batch = sample_prompts(label, None, TEXT_INDEX, options, torch.Generator().manual_seed(seed))
        for r in range(2):
            lab, pts = batch.prompts.point_labels[0, r], batch.prompts.points[0, r].long()
            values = label[0, pts[:, 0], pts[:, 1], pts[:, 2]]
            assert (values[lab == 1] == batch.classes[0, r]).all()
            assert (values[lab == 0] != batch.classes[0, r]).all()
        dot = int((batch.classes[0] == 2).nonzero()[0, 0])
        assert batch.prompts.boxes[0, dot].tolist() == [0, 0, 23, 0, 0, 23]
        batch = sample_prompts(full, None, TEXT_INDEX, options, torch.Generator().manual_seed(seed))
        assert (batch.prompts.point_labels[0, 0] != 0).all() and (batch.prompts.point_labels[0, 0] == 1).any()
        assert batch.prompts.boxes[0, 0].tolist() == [0, 0, 0, 15, 19, 23]


def test_same_seed_same_batch_and_seeds_differ():
    a, _, _ = _sample(3)
    b, _, _ = _sample(3)
    c, _, _ = _sample(4)
    for x, y in ((a.prompts.points, b.prompts.points), (a.prompts.boxes, b.prompts.boxes),
                 (a.targets, b.targets), (a.classes, b.classes), (a.prompts.text, b.prompts.text)):
        assert torch.equal(x, y)
    assert a.combos == b.combos
    assert not (torch.equal(a.prompts.points, c.prompts.points) and a.combos == c.combos)


def test_vectorised_targets_match_the_row_masks():
    batch, label, pse = _sample(1)
    torch.testing.assert_close(region_targets(label, pse, batch.classes), batch.targets)


def test_the_loaders_narrow_integer_maps_draw_the_same_prompts_and_targets():
    """The loader hands over int16 labels and int32 pseudo-masks; prompts and targets are those of int64 maps."""
    wide, label, pse = _sample(2)
    narrow = sample_prompts(label.to(torch.int16), pse.to(torch.int32), TEXT_INDEX,
                            PromptOptions(max_prompts=7, max_positive_points=4, max_negative_points=3),
                            torch.Generator().manual_seed(2))
    for name in ("text", "points", "point_labels", "boxes", "box_mask"):
        assert torch.equal(getattr(narrow.prompts, name), getattr(wide.prompts, name)), name
    assert torch.equal(narrow.targets, wide.targets) and torch.equal(narrow.classes, wide.classes)
    torch.testing.assert_close(region_targets(label.to(torch.int16), pse.to(torch.int32), narrow.classes),
                               wide.targets)
    with pytest.raises(ValueError, match="label must be an integer map"):
        sample_prompts(label.float(), None, TEXT_INDEX, PromptOptions(max_prompts=2), torch.Generator())


def test_modality_and_empty_label():
    label = torch.zeros(1, *SHAPE, dtype=torch.long)
    batch = sample_prompts(label, None, TEXT_INDEX, PromptOptions(max_prompts=3, absent_text_prompts=2),
                           torch.Generator().manual_seed(0), modality=torch.tensor([1]))
    assert batch.prompts.modality.tolist() == [1]
    assert batch.combos[0] == ["text", "text", ""] and not batch.targets.any()


def test_bad_options():
    with pytest.raises(ValueError, match="did you mean 'box\\+text'"):
        PromptOptions(max_prompts=4, combos=("box+txt",))
    with pytest.raises(ValueError, match="no prompt combination"):
        PromptOptions(max_prompts=4, combos=("text", "points+text"), text=False)
    with pytest.raises(ValueError, match="max_prompts"):
        PromptOptions(max_prompts=0)
    with pytest.raises(ValueError, match="text indices"):
        sample_prompts(torch.full((1, 4, 4, 4), 9), None, TEXT_INDEX, PromptOptions(max_prompts=2),
                       torch.Generator())


# --- losses ------------------------------------------------------------------------------------------------


def _perfect(targets: torch.Tensor) -> torch.Tensor:
    return (targets * 2 - 1) * 30


def test_prompt_loss_perfect_padding_and_grad():
    batch, _, _ = _sample(0)
    t, w = batch.targets, batch.weights
    assert prompt_loss(_perfect(t), t, w) < 1e-4
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = prompt_loss(logits, t, w)
    changed = logits.detach().clone()
    changed[w == 0] = 100.0
    assert torch.equal(prompt_loss(changed, t, w), loss.detach())
    loss.backward()
    assert logits.grad[w > 0].abs().sum() > 0 and not logits.grad[w == 0].any()
    zero = prompt_loss(logits, t, torch.zeros_like(w))
    assert zero.item() == 0 and zero.requires_grad
    zero.backward()


def test_prompt_loss_weights_scale_rows():
    t = torch.zeros(1, 2, 4, 4, 4)
    t[0, 0, :2] = 1
    logits = torch.zeros_like(t)
    one = prompt_loss(logits[:, :1], t[:, :1], torch.ones(1, 1))
    two = prompt_loss(logits[:, 1:], t[:, 1:], torch.ones(1, 1))
    mixed = prompt_loss(logits, t, torch.tensor([[1.0, 0.1]]))
    torch.testing.assert_close(mixed, (one + 0.1 * two) / 1.1)


def test_prompt_loss_float32_under_bf16_autocast():
    batch, _, _ = _sample(0)
    logits = torch.randn(batch.targets.shape, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = logits.to(torch.bfloat16) * 1.0
        loss = prompt_loss(low, batch.targets, batch.weights)
    assert low.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None


def test_prompt_dice():
    t = torch.zeros(1, 3, 4, 4, 4)
    t[0, 0, :2] = 1
    t[0, 1, :2] = 1
    logits = _perfect(t)
    logits[0, 1] = -30
    logits[0, 1, 3] = 30  # disjoint from the target
    d = prompt_dice(logits, t)
    assert d[0, 0] == 1 and d[0, 1] == 0 and torch.isnan(d[0, 2])


def _unet_case(k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    label[:, 2:5, 2:6, 1:4] = 1
    label[1, 5:, 5:, 5:] = 2
    onehot = torch.nn.functional.one_hot(label, k).permute(0, 4, 1, 2, 3).float()
    return label, (onehot * 2 - 1) * 20


def test_unet_loss_both_shapes_and_perfect_logits():
    label, perfect = _unet_case()
    assert unet_loss(perfect, label, 3) < 1e-3
    assert unet_loss(perfect, label.unsqueeze(1), 3) < 1e-3
    # deep supervision: heads at ½ and ¼ of the resolution, scored against the label resized there by nearest
    # neighbour and weighted 4 : 2 : 1
    gen = torch.Generator().manual_seed(0)
    heads = (perfect, torch.randn(2, 3, 4, 4, 4, generator=gen), torch.randn(2, 3, 2, 2, 2, generator=gen))
    ref = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    half, quarter = label[:, None, 1::2, 1::2, 1::2], label[:, None, 2::4, 2::4, 2::4]  # nearest-exact: centres
    expected = (4 * ref(heads[0], label.unsqueeze(1)) + 2 * ref(heads[1], half) + ref(heads[2], quarter)) / 7
    torch.testing.assert_close(unet_loss(heads, label, 3), expected)
    assert unet_loss((perfect, perfect[:, :, ::2, ::2, ::2]), label, 3) > unet_loss(perfect, label, 3)
    with pytest.raises(ValueError):
        unet_loss(perfect, label, 4)


def test_unet_loss_scores_the_batch_as_one_image():
    # batch Dice: two samples side by side along x are one image with the same overlaps and the same voxels, so the
    # loss is the same; sample 0 lacks class 2 entirely (a per-sample Dice would score that term on its own)
    label, _ = _unet_case()
    logits = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    side_by_side = (torch.cat([logits[0], logits[1]], dim=-1)[None], torch.cat([label[0], label[1]], dim=-1)[None])
    torch.testing.assert_close(unet_loss(logits, label, 3), unet_loss(*side_by_side, 3))


def test_unet_loss_on_dynunet_deep_supervision():
    torch.manual_seed(0)
    model = build_model(tiny_spec("unet")).train()
    image = torch.randn(1, 1, *model.input_size)
    out = model(image)
    strides = [torch.tensor(s) for s in model.spec.unet.strides]
    assert len(out) == 1 + model.deep_supervision_heads >= 2
    for h, head in enumerate(out):  # each head at its own level's resolution
        scale = torch.stack(strides[: h + 1]).prod(0)
        assert tuple(head.shape[2:]) == tuple((torch.tensor(model.input_size) // scale).tolist())
    label = torch.zeros(1, *model.input_size, dtype=torch.long)
    label[0, 4:10, 8:20, 8:20] = 2
    loss = unet_loss(out, label, out[0].shape[1])
    loss.backward()
    assert torch.isfinite(loss)


# --- end to end --------------------------------------------------------------------------------------------


def test_segvol_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    size = TINY_VIT.input_size
    label = torch.zeros(1, *size, dtype=torch.long)
    label[0][_ball((5, 10, 10), 4, size)] = 1
    label[0][_ball((10, 20, 22), 5, size)] = 2
    image = label.unsqueeze(1).float() + 0.3 * torch.randn(1, 1, *size)
    options = PromptOptions(max_prompts=4, max_positive_points=3, max_negative_points=2)
    batch = sample_prompts(label, None, [0, 1, 2], options, torch.Generator().manual_seed(0))
    frozen = set(model.unused_parameter_names())
    params = [p for n, p in model.named_parameters() if n not in frozen]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(30):
        loss = prompt_loss(model(image, batch.prompts), batch.targets, batch.weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_text_alone_is_drawn_with_its_share_and_the_rest_uniformly() -> None:
    options = PromptOptions(max_prompts=4, text_only_share=0.4)
    g = torch.Generator().manual_seed(0)
    draws = [options.draw_combo(g) for _ in range(3000)]
    share = draws.count("text") / len(draws)
    assert 0.37 < share < 0.43
    others = [c for c in COMBOS if c != "text"]
    counts = [draws.count(c) for c in others]
    assert min(counts) > 0.8 * max(counts)  # the five others alike
    assert [options.draw_combo(torch.Generator().manual_seed(5)) for _ in range(3)] == \
        [options.draw_combo(torch.Generator().manual_seed(5)) for _ in range(3)]
    no_text = PromptOptions(max_prompts=4, text=False)
    assert "text" not in {no_text.draw_combo(g) for _ in range(200)}
    only = PromptOptions(max_prompts=4, combos=("text",))
    assert {only.draw_combo(g) for _ in range(20)} == {"text"}
    with pytest.raises(ValueError, match="text_only_share"):
        PromptOptions(max_prompts=4, text_only_share=1.5)
