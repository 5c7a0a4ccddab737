"""SO(3)-steerable patch embedding: one rotation-invariant token per ViT patch (the "so3" variant's branch).

Pipeline for an input ``[B, C, Z, Y, X]`` and token patch ``(pz, py, px)``:

1. ``R3Conv`` (escnn, ``rot3dOnR3``) with a cubic kernel ``K`` and stride ``K``, no padding, from ``C`` trivial
   fields: the ``K``-cells tile every patch exactly, so a 90 degree rotation of the input permutes the cells and
   rotates each cell's content; the only full-resolution tensor is the input itself.
2. Equivariant nonlinearity, a per-cell steerable 1x1x1 ``R3Conv`` and the nonlinearity again.  "scalar": trivial
   fields (isotropic kernels) with ReLU.  "irreps": ``channels`` copies of the SO(3) irreps of frequency
   ``0..max_frequency``; ReLU on the trivial fields and a sigmoid gate per non-trivial field (escnn's
   ``GatedNonLinearity1``).  The 1x1x1 conv keeps every token a function of its own patch, like MONAI's patch
   embedding; mixing across tokens is left to the ViT.
3. Invariant map: trivial fields as they are plus the norm of every irrep field (escnn's ``NormPool``).
4. Orbit pooling over the ``patch // K`` cells of each token: cells are grouped into orbits of the rotations that
   map the token grid onto itself (90 degrees in the planes of equal patch size, 180 degrees in every plane) and
   averaged per orbit.  A plain average is the one-orbit special case; the orbits keep the radial layout inside
   anisotropic patches (corner / edge / centre cells of the 4x4 in-plane window of a (4, 16, 16) patch) at no loss
   of invariance.
5. ``LayerNorm`` and ``nn.Linear(n_invariants * n_orbits, hidden_size)`` per token.

Why not escnn's defaults: (a) ``K = gcd(patch_size)`` (``min`` whenever it divides the others) because the cells
must tile every anisotropic patch exactly; (b) escnn's default rings for an even ``K`` sit at radii 0 and 1 with
sigma 0.4, so the grid has no point on ring 0 and the corner voxels of a 4^3 cell get 1/3000 of the centre
weight: the whole patchifier would be one fixed blob per channel.  Rings are placed over the actual grid radii
instead; (c) escnn modules are awkward inside a larger model: ``GatedNonLinearity1`` and ``NormPool`` allocate
float32 outputs whatever the input dtype; ``R3Conv`` caches its filter as a buffer on ``eval()`` (mode-dependent
state_dict keys, stale after ``load_state_dict``), has no ``export()``, shares its sampled basis modules between
equal convs by default (``.to()`` on one model moves another's), and SO(3) field types can be neither deep-copied
nor pickled.  So escnn builds the kernel bases and the He-initialised weights at construction, the convs are
exported to :class:`SteerableConv3d` (same filter expansion, plain torch) and the gate and norms are written here
in plain torch (same maths); the result is an ordinary ``nn.Module``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from escnn import gspaces
from escnn import nn as enn

from segvolpipe.errors import did_you_mean

__all__ = ["FIELD_TYPES", "SteerableConv3d", "SteerablePatchEmbedding", "invariance_axes"]

FIELD_TYPES = ("scalar", "irreps")


def invariance_axes(patch_size: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Pairs of array axes whose 90 degree rotation maps the token grid of ``patch_size`` onto itself.

    Those are the pairs with equal patch size: ``(4, 16, 16) -> [(1, 2)]``, cubic -> all three pairs.  The image
    must have equal extents on the pair too for the rotated image to be a valid input.
    """
    return [(a, b) for a, b in itertools.combinations(range(3), 2) if patch_size[a] == patch_size[b]]


def _orbit_matrix(window: tuple[int, int, int], axes: list[tuple[int, int]]) -> torch.Tensor:
    """Averaging matrix ``[prod(window), n_orbits]`` over the orbits of the cells of one token window."""
    idx = np.arange(math.prod(window)).reshape(window)
    parent = list(range(idx.size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    moves = [np.rot90(idx, 1, ab) for ab in axes] + [np.rot90(idx, 2, ab) for ab in itertools.combinations(range(3), 2)]
    for moved in moves:
        for i, j in zip(idx.ravel(), moved.ravel(), strict=True):
            parent[find(int(i))] = find(int(j))
    roots = sorted({find(i) for i in range(idx.size)})
    mat = torch.zeros(idx.size, len(roots), dtype=torch.float64)
    for i in range(idx.size):
        mat[i, roots.index(find(i))] = 1.0
    return (mat / mat.sum(0, keepdim=True)).float()


def _ring_params(k: int) -> tuple[list[float] | None, list[float] | None]:
    """Rings and widths spanning the radii of a ``k^3`` grid (``None``: escnn's defaults, used for ``k == 1``)."""
    c = np.arange(k) - (k - 1) / 2
    radii = np.unique(np.sqrt((np.stack(np.meshgrid(c, c, c)) ** 2).sum(0)).round(6))
    if len(radii) == 1:
        return (None, None) if radii[0] == 0 else ([float(radii[0])], [0.4])
    rings = np.linspace(radii[0], (k - 1) / 2 * np.sqrt(3), min(k, len(radii)))  # escnn's own max_radius
    return rings.tolist(), [0.6 * float(rings[1] - rings[0])] * len(rings)


class SteerableConv3d(torch.nn.Module):
    """Plain-torch export of an escnn ``R3Conv`` (escnn 1.0.11 has no ``R3Conv.export()``).

    Keeps the steerable parametrisation: ``filter = sum_b weights_b * basis_b`` is re-expanded on every call (a
    small einsum per pair of field types), then ``F.conv3d`` runs.  Holds no escnn object, so it deep-copies,
    pickles and moves with ``.to()`` like any module, and its state_dict keys do not depend on train/eval.

    Args:
        conv: the escnn conv to export; its fields must be contiguous per representation.
    """

    def __init__(self, conv: enn.R3Conv) -> None:
        super().__init__()
        be = conv.basisexpansion
        self.stride, self.padding, self.kernel_size = conv.stride, conv.padding, conv.kernel_size
        self.shape = (conv.out_type.size, conv.in_type.size, be.S)
        self.weights = torch.nn.Parameter(conv.weights.detach().clone())
        self.bias = torch.nn.Parameter(conv.bias.detach().clone())
        self.register_buffer("bias_expansion", conv.bias_expansion.detach().clone())
        self.blocks: list[tuple[int, ...]] = []  # weight range, field counts, output and input channel ranges
        for n, pair in enumerate(be._representations_pairs):
            name = be._escape_pair(pair)
            if not be._contiguous[pair]:
                raise ValueError(f"fields of {pair} are not contiguous")
            self.register_buffer(f"basis{n}", getattr(be, f"block_expansion_{name}").sampled_basis.detach().clone())
            self.blocks.append((*be._weights_ranges[pair], be._out_count[pair[1]], be._in_count[pair[0]],
                                *getattr(be, f"out_indices_{name}")[:2], *getattr(be, f"in_indices_{name}")[:2]))

    def expand(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Filter ``[C_out, C_in, K, K, K]`` and bias ``[C_out]`` (escnn's ``expand_parameters``)."""
        filt = self.weights.new_zeros(self.shape)
        for n, (w0, w1, n_out, n_in, o0, o1, i0, i1) in enumerate(self.blocks):
            basis = getattr(self, f"basis{n}")  # [n_basis, d_out, d_in, S]
            block = torch.einsum("boip,xyb->xoyip", basis, self.weights[w0:w1].view(n_out, n_in, -1))
            filt[o0:o1, i0:i1] = block.reshape(o1 - o0, i1 - i0, -1)
        return filt.view(*self.shape[:2], *(self.kernel_size,) * 3), self.bias_expansion @ self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, *S] -> [B, C_out, *S']``."""
        weight, bias = self.expand()
        return F.conv3d(x, weight, bias, stride=self.stride, padding=self.padding)


class SteerablePatchEmbedding(torch.nn.Module):
    """Patch embedding whose tokens are invariant to the 90 degree rotations that map the token grid onto itself.

    Args:
        in_channels: image channels (each an SO(3)-invariant scalar field).
        img_size: ``(Z, Y, X)`` of the input, divisible by ``patch_size``.
        patch_size: token patch ``(pz, py, px)``, as in the ViT beside it.
        hidden_size: token width.
        field_type: "scalar" (trivial fields, isotropic kernels) or "irreps" (irreps ``0..max_frequency``).
        channels: number of fields per irrep (the multiplicity).
        max_frequency: highest irrep frequency for "irreps" (1 or 2 are sensible; ignored for "scalar").
        kernel_size: cubic cell size ``K`` (>= 2 for "irreps"); must divide every patch size.  Default
            ``gcd(patch_size)``.
    """

    def __init__(self, in_channels: int, img_size: tuple[int, int, int], patch_size: tuple[int, int, int],
                 hidden_size: int, field_type: str = "scalar", channels: int = 16, max_frequency: int = 1,
                 kernel_size: int | None = None) -> None:
        super().__init__()
        img_size, patch_size = tuple(int(s) for s in img_size), tuple(int(p) for p in patch_size)
        if field_type not in FIELD_TYPES:
            raise ValueError(f"unknown field_type {field_type!r}{did_you_mean(field_type, FIELD_TYPES, cutoff=0.0)} "
                             f"(one of {FIELD_TYPES})")
        if len(img_size) != 3 or len(patch_size) != 3:
            raise ValueError(f"img_size {img_size} and patch_size {patch_size} must have three entries (Z, Y, X)")
        for name, value in [("in_channels", in_channels), ("hidden_size", hidden_size), ("channels", channels),
                            *zip(("img_size",) * 3 + ("patch_size",) * 3, img_size + patch_size, strict=True)]:
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if any(i % p for i, p in zip(img_size, patch_size, strict=True)):
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if field_type == "irreps" and max_frequency < 1:
            raise ValueError(f"max_frequency must be >= 1 for field_type 'irreps', got {max_frequency}")
        k = math.gcd(*patch_size) if kernel_size is None else int(kernel_size)
        if k < 1 or any(p % k for p in patch_size):
            raise ValueError(f"kernel_size {k} must be positive and divide every patch size {patch_size}")
        if field_type == "irreps" and k == 1:
            raise ValueError("field_type 'irreps' needs kernel_size >= 2 (a 1^3 kernel has no non-trivial part)")
        self.img_size, self.patch_size, self.kernel_size, self.field_type = img_size, patch_size, k, field_type
        self.grid = tuple(i // p for i, p in zip(img_size, patch_size, strict=True))
        self.window = tuple(p // k for p in patch_size)
        self.freqs = list(range(1, max_frequency + 1)) if field_type == "irreps" else []
        self.channels = channels

        gs = gspaces.rot3dOnR3()  # escnn is only used here: the convs are exported to plain torch
        triv = [gs.trivial_repr]
        hidden = triv * channels * (1 + len(self.freqs)) + [gs.irrep(f) for f in self.freqs for _ in range(channels)]
        in_type = enn.FieldType(gs, triv * in_channels)
        hidden_type = enn.FieldType(gs, hidden)  # scalars, gates, then the irrep fields grouped by frequency
        feature_type = enn.FieldType(gs, hidden[:channels] + hidden[channels * (1 + len(self.freqs)):])
        rings, sigma = _ring_params(k)
        fmax = float(max(self.freqs, default=0))
        ambient = torch.empty(0).device  # e.g. "meta" when parameters are only counted
        with torch.device("cpu"):  # escnn samples its bases with real tensors
            self.conv1 = SteerableConv3d(enn.R3Conv(
                in_type, hidden_type, kernel_size=k, stride=k, rings=rings, sigma=sigma,
                frequencies_cutoff=lambda r, fmax=fmax: 0.0 if r == 0 else fmax, recompute=True))
            self.conv2 = SteerableConv3d(enn.R3Conv(feature_type, hidden_type, kernel_size=1, recompute=True))
        self.conv1.to(ambient)
        self.conv2.to(ambient)
        self.in_channels = in_channels
        self.register_buffer("orbits", _orbit_matrix(self.window, invariance_axes(patch_size)), persistent=False)
        self.n_invariants = channels * (1 + len(self.freqs))
        n_features = self.n_invariants * self.orbits.shape[1]
        self.norm = torch.nn.LayerNorm(n_features)
        self.proj = torch.nn.Linear(n_features, hidden_size)

    def _gate(self, y: torch.Tensor) -> torch.Tensor:
        """Equivariant nonlinearity ``[B, scalars + gates + irrep channels, *S] -> [B, scalars + irrep channels, *S]``.

        ReLU on the scalar fields, ``sigmoid(gate) * field`` on every irrep field; the gates are dropped.
        """
        c, n = self.channels, len(self.freqs)
        out, start = [torch.relu(y[:, :c])], c * (1 + n)
        for i, f in enumerate(self.freqs):
            d = 2 * f + 1
            field = y[:, start:start + c * d].unflatten(1, (c, d))
            gate = torch.sigmoid(y[:, c * (1 + i):c * (2 + i)]).unsqueeze(2)
            out.append((field * gate).flatten(1, 2))
            start += c * d
        return torch.cat(out, 1)

    def _invariants(self, y: torch.Tensor) -> torch.Tensor:
        """Invariant map ``[B, c + sum_f c * (2f + 1), *S] -> [B, n_invariants, *S]``: scalars and irrep norms."""
        c, out, start = self.channels, [y[:, :self.channels]], self.channels
        for f in self.freqs:
            d = 2 * f + 1
            out.append(y[:, start:start + c * d].unflatten(1, (c, d)).norm(dim=2))
            start += c * d
        return torch.cat(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed an image.

        Args:
            x: ``[B, C, Z, Y, X]`` with ``(Z, Y, X) == img_size``.

        Returns:
            Tokens ``[B, N, hidden_size]``, ``N = prod(img_size // patch_size)``, in C order over ``(gz, gy, gx)``
            (token index ``(iz * gy + iy) * gx + ix``), the order of MONAI's ViT patch embedding.
        """
        if x.ndim != 5 or tuple(x.shape[2:]) != self.img_size or x.shape[1] != self.in_channels:
            raise ValueError(f"expected [B, {self.in_channels}, *{self.img_size}], got {list(x.shape)}")
        y = self._gate(self.conv1(x))  # [B, F, gz*wz, gy*wy, gx*wx]
        y = self._invariants(self._gate(self.conv2(y)))  # [B, I, gz*wz, gy*wy, gx*wx]
        (gz, gy, gx), (wz, wy, wx) = self.grid, self.window
        y = y.reshape(y.shape[0], self.n_invariants, gz, wz, gy, wy, gx, wx).permute(0, 2, 4, 6, 1, 3, 5, 7)
        y = y.reshape(y.shape[0], gz * gy * gx, self.n_invariants, wz * wy * wx) @ self.orbits.to(y.dtype)
        return self.proj(self.norm(y.flatten(2)))  # [B, N, hidden_size]
