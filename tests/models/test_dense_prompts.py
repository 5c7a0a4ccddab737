"""The box and points drawn on the embedding grid (the dense prompt this package adds to SegVol's)."""

from __future__ import annotations

import pytest
import torch

from segvolpipe.models.prompt_encoder import box_share, point_counts
from segvolpipe.models.registry import build_model
from tests.models.conftest import mixed_prompts, tiny_spec


def test_box_share_is_the_fraction_of_each_cell_inside_the_box() -> None:
    # a 4×8×8 volume on a 2×2×2 grid: cells are 2×4×4 voxels; the box covers voxels z 0-1, y 2-5, x 0-7
    share = box_share(torch.tensor([[0, 2, 0, 1, 5, 7]]), (4, 8, 8), (2, 2, 2))[0]
    assert share.shape == (2, 2, 2)
    assert torch.allclose(share[0], torch.full((2, 2), 0.5))  # z: whole cell; y: half of each cell; x: whole
    assert torch.equal(share[1], torch.zeros(2, 2))
    whole = box_share(torch.tensor([[0, 0, 0, 3, 7, 7]]), (4, 8, 8), (2, 2, 2))
    assert torch.equal(whole, torch.ones(1, 2, 2, 2))
    # the total share is the box's volume in cells, wherever it lies
    boxes = torch.tensor([[1, 3, 2, 2, 6, 5], [0, 0, 7, 3, 7, 7]])
    total = box_share(boxes, (4, 8, 8), (2, 2, 2)).sum(dim=(1, 2, 3))
    assert torch.allclose(total, torch.tensor([2 * 4 * 4, 4 * 8 * 1]) / (2 * 4 * 4))


def test_point_counts_put_each_point_in_its_cell_and_skip_padding() -> None:
    points = torch.tensor([[[0, 0, 0], [3, 7, 7], [3, 6, 6], [1, 1, 1]]])
    labels = torch.tensor([[1, 0, 0, -1]])
    counts = point_counts(points, labels, (4, 8, 8), (2, 2, 2))[0]
    assert counts.shape == (2, 2, 2, 2)
    assert counts[1, 0, 0, 0] == 1 and counts[1].sum() == 1  # the positive one
    assert counts[0, 1, 1, 1] == 2 and counts[0].sum() == 2  # both negatives in the far corner


def test_zero_dense_vectors_compute_segvol_and_trained_ones_touch_only_their_rows(image) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec()).eval()
    prompts = mixed_prompts()
    with torch.no_grad():
        ours = model(image, prompts)
        segvol_dense = model.prompt_encoder.dense_embedding
        original = model.prompt_encoder.dense_prompts
        model.prompt_encoder.dense_prompts = lambda flat: segvol_dense()  # SegVol's decoder input
        reference = model(image, prompts)
        model.prompt_encoder.dense_prompts = original
        assert torch.equal(ours, reference)
        model.prompt_encoder.dense_prompt_box.fill_(1.0)
        boxed = model(image, prompts)
    changed = (boxed - ours).abs().amax(dim=(2, 3, 4)) > 0
    # rows with a box: [0, 0] and [1, 0]; the text-only row [0, 1] and the points row [1, 1] are untouched
    assert changed.tolist() == [[True, False], [True, False]]


def test_a_checkpoint_from_before_the_dense_prompt_loads_as_that_model(image) -> None:
    from segvolpipe.models.registry import ADDED_AT_ZERO, load_model_state

    torch.manual_seed(0)
    trained = build_model(tiny_spec()).eval()
    old_state = {k: v for k, v in trained.state_dict().items() if not k.endswith(ADDED_AT_ZERO)}
    assert len(old_state) == len(trained.state_dict()) - 2
    fresh = build_model(tiny_spec()).eval()
    with torch.no_grad():
        fresh.prompt_encoder.dense_prompt_box.fill_(3.0)  # whatever it held, the old checkpoint's model has zeros
        load_model_state(fresh, old_state)
        assert torch.equal(fresh(image, mixed_prompts()), trained(image, mixed_prompts()))
    with pytest.raises(RuntimeError, match="Missing key"):  # anything else missing is still an error
        load_model_state(fresh, {k: v for k, v in old_state.items() if not k.startswith("mask_decoder.")})
