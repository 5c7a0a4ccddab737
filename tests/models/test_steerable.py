"""SteerablePatchEmbedding: shapes, gradients, exact rotation invariance of the tokens, argument checks."""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn

from segvolpipe.models.steerable import FIELD_TYPES, SteerableConv3d, SteerablePatchEmbedding, invariance_axes

ALL_PAIRS = list(itertools.combinations(range(3), 2))


def _rotated_tokens(tokens: torch.Tensor, grid: tuple[int, int, int], k: int, axes: tuple[int, int]) -> torch.Tensor:
    """Apply rot90(k, axes) to the token grid of ``tokens [B, N, H]`` (axes are spatial, 0..2)."""
    b, _, h = tokens.shape
    grid_tokens = tokens.reshape(b, *grid, h)
    return torch.rot90(grid_tokens, k, (axes[0] + 1, axes[1] + 1)).reshape(b, -1, h)


def _max_invariance_error(embed: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int, int],
                          moves: list[tuple[tuple[int, int], int]]) -> float:
    """Largest |tokens(rot(x)) - rot(tokens(x))| over ``moves``, relative to the mean token magnitude."""
    with torch.no_grad():
        ref = embed(x)
        errs = [(embed(torch.rot90(x, k, (a + 2, b + 2))) - _rotated_tokens(ref, grid, k, (a, b))).abs().max()
                for (a, b), k in moves]
    return (max(errs) / ref.abs().mean()).item()


def _embed(field_type: str, img: tuple[int, int, int], patch: tuple[int, int, int], **kw: int) -> SteerablePatchEmbedding:
    torch.manual_seed(0)
    return SteerablePatchEmbedding(1, img, patch, 32, field_type=field_type, channels=4, **kw)


def test_invariance_axes() -> None:
    assert invariance_axes((4, 16, 16)) == [(1, 2)]
    assert invariance_axes((4, 4, 4)) == ALL_PAIRS
    assert invariance_axes((8, 4, 8)) == [(0, 2)]
    assert invariance_axes((2, 4, 8)) == []


@pytest.mark.parametrize("field_type", FIELD_TYPES)
def test_shapes_and_gradients(field_type: str) -> None:
    torch.manual_seed(0)
    embed = SteerablePatchEmbedding(1, (16, 16, 16), (4, 4, 4), 32, field_type=field_type, channels=4)
    x = torch.randn(2, 1, 16, 16, 16)
    tokens = embed(x)
    assert tokens.shape == (2, 64, 32)
    tokens.sum().backward()
    for conv in (embed.conv1, embed.conv2):
        assert conv.weights.grad is not None and conv.weights.grad.abs().sum() > 0
    # state_dict keys do not depend on the mode (escnn's own R3Conv caches its filter as a buffer on eval())
    keys = set(embed.state_dict())
    assert set(embed.eval().state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(embed(x), tokens)

    aniso = SteerablePatchEmbedding(2, (8, 16, 16), (2, 4, 4), 24, field_type=field_type, channels=4)
    assert aniso(torch.randn(1, 2, 8, 16, 16)).shape == (1, 4 * 4 * 4, 24)
    aniso = SteerablePatchEmbedding(1, (8, 16, 16), (4, 8, 8), 24, field_type=field_type, channels=4)
    assert aniso(torch.randn(3, 1, 8, 16, 16)).shape == (3, 2 * 2 * 2, 24)


@pytest.mark.parametrize("field_type,max_frequency", [("scalar", 1), ("irreps", 1), ("irreps", 2)])
def test_cubic_patch_invariance(field_type: str, max_frequency: int) -> None:
    embed = _embed(field_type, (8, 8, 8), (4, 4, 4), max_frequency=max_frequency).double().eval()
    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    moves = [(axes, k) for axes in ALL_PAIRS for k in (1, 2, 3)]
    # float64 is exact to ~1e-15; the l=2 kernel basis is sampled by escnn in float32 (~1e-8 on the tokens)
    assert _max_invariance_error(embed, x, (2, 2, 2), moves) < (1e-10 if max_frequency == 1 else 1e-6)


@pytest.mark.parametrize("field_type", FIELD_TYPES)
@pytest.mark.parametrize("patch,kernel_size", [((2, 4, 4), None), ((4, 8, 8), 2)])
def test_anisotropic_patch_invariance(field_type: str, patch: tuple[int, int, int], kernel_size: int | None) -> None:
    img = (8, 16, 16)
    embed = _embed(field_type, img, patch, kernel_size=kernel_size).double().eval()
    x = torch.randn(1, 1, *img, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grid = tuple(i // p for i, p in zip(img, patch, strict=True))
    assert invariance_axes(patch) == [(1, 2)]
    # 90 degrees in the square plane, 180 degrees in every plane: all of them map the token grid onto itself
    moves = [(axes, k) for axes in invariance_axes(patch) for k in (1, 2, 3)] + [(axes, 2) for axes in ALL_PAIRS]
    assert _max_invariance_error(embed, x, grid, moves) < 1e-10


def test_float32_invariance() -> None:
    embed = _embed("irreps", (8, 8, 8), (4, 4, 4)).eval()
    x = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    assert _max_invariance_error(embed, x, (2, 2, 2), [(axes, 1) for axes in ALL_PAIRS]) < 1e-5


def test_instances_do_not_share_kernel_bases() -> None:
    """escnn shares sampled-basis modules between equal convs by default: .double()/.to() on one would leak."""
    first, second = _embed("irreps", (8, 8, 8), (4, 4, 4)), _embed("irreps", (8, 8, 8), (4, 4, 4))
    second.double()
    assert all(b.dtype == torch.float32 for b in first.buffers())
    assert first(torch.randn(1, 1, 8, 8, 8)).dtype == torch.float32


def test_export_matches_escnn() -> None:
    """SteerableConv3d expands exactly escnn's filter and bias and convolves like R3Conv."""
    torch.manual_seed(0)
    gs = gspaces.rot3dOnR3()
    in_type = enn.FieldType(gs, [gs.trivial_repr] * 2 + [gs.irrep(1)] * 2)
    out_type = enn.FieldType(gs, [gs.trivial_repr] * 3 + [gs.irrep(1)] * 2 + [gs.irrep(2)])
    conv = enn.R3Conv(in_type, out_type, kernel_size=3, padding=1, recompute=True)
    exported = SteerableConv3d(conv)
    ref_filter, ref_bias = conv.expand_parameters()
    filt, bias = exported.expand()
    torch.testing.assert_close(filt, ref_filter)
    torch.testing.assert_close(bias, ref_bias)
    x = torch.randn(2, in_type.size, 5, 6, 7)
    torch.testing.assert_close(exported(x), conv(enn.GeometricTensor(x, in_type)).tensor)


def test_copy_pickle_and_reload() -> None:
    """The embedding is a plain module: deepcopy, torch.save of the module, and load_state_dict in eval mode."""
    embed = _embed("irreps", (8, 8, 8), (4, 4, 4)).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        ref = embed(x)
        torch.testing.assert_close(copy.deepcopy(embed)(x), ref)
        buffer = io.BytesIO()
        torch.save(embed, buffer)
        buffer.seek(0)
        torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), ref)
        fresh = SteerablePatchEmbedding(1, (8, 8, 8), (4, 4, 4), 32, field_type="irreps", channels=4).eval()
        fresh.load_state_dict(embed.state_dict())
        torch.testing.assert_close(fresh(x), ref)


def test_constant_input_has_finite_gradients() -> None:
    """A constant image (air, padding) gives zero irrep fields: the norms must not produce NaN gradients."""
    embed = _embed("irreps", (8, 8, 8), (4, 4, 4), max_frequency=2)
    embed(torch.full((1, 1, 8, 8, 8), -1.0)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in embed.parameters())


def test_plain_patch_embedding_is_not_invariant() -> None:
    """Negative control: the same check on a MONAI-style conv patch embedding (kernel = stride = patch) fails."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 32, kernel_size=4, stride=4).double()

    def plain(x: torch.Tensor) -> torch.Tensor:
        return conv(x).flatten(2).transpose(1, 2)  # [B, N, 32], tokens in C order over the grid

    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    moves = [(axes, k) for axes in ALL_PAIRS for k in (1, 2, 3)]
    for move in moves:
        assert _max_invariance_error(plain, x, (2, 2, 2), [move]) > 0.1
    assert _max_invariance_error(plain, x, (2, 2, 2), moves) > 0.5


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="did you mean 'irreps'"):
        SteerablePatchEmbedding(1, (16, 16, 16), (4, 4, 4), 32, field_type="irrep")
    with pytest.raises(ValueError, match="did you mean 'scalar'"):
        SteerablePatchEmbedding(1, (16, 16, 16), (4, 4, 4), 32, field_type="scalars")
    with pytest.raises(ValueError, match="not divisible"):
        SteerablePatchEmbedding(1, (16, 16, 18), (4, 4, 4), 32)
    with pytest.raises(ValueError, match="positive"):
        SteerablePatchEmbedding(1, (16, 16, 16), (4, 4, 4), 0)
    with pytest.raises(ValueError, match="divide every patch size"):
        SteerablePatchEmbedding(1, (16, 16, 16), (4, 4, 4), 32, kernel_size=3)
    with pytest.raises(ValueError, match="kernel_size >= 2"):
        SteerablePatchEmbedding(1, (16, 16, 16), (4, 4, 4), 32, field_type="irreps", kernel_size=1)
    with pytest.raises(ValueError, match="max_frequency"):
        SteerablePatchEmbedding(1, (16, 16, 16), (4, 4, 4), 32, field_type="irreps", max_frequency=0)
    embed = SteerablePatchEmbedding(1, (8, 8, 8), (4, 4, 4), 8, channels=2)
    with pytest.raises(ValueError, match="expected"):
        embed(torch.randn(1, 1, 8, 8, 16))
