"""NIfTI read/write through nibabel, on one canonical grid.

Every array inside the package is on the *canonical grid* of its file: the voxels of the file, flipped
and transposed (never interpolated) so that array axes (0, 1, 2) = (z, y, x) point to patient Superior,
Anterior and Right. Axis 0 is therefore always the longitudinal axis, whatever the file's orientation
(RAS, LPS, LAS, sagittal or coronal acquisitions ...). :class:`Geometry` keeps what is needed to put an
array back on the file's own grid with the file's exact affine, so predictions are written in the
input's shape, affine and orientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt2axcodes,
    ornt_transform,
)

from segvolpipe.errors import UserError

CANONICAL_AXCODES = ("S", "A", "R")
_CANONICAL_ORNT = axcodes2ornt(CANONICAL_AXCODES)
NIFTI_SUFFIXES = (".nii.gz", ".nii")

# Affines of an image and its label (or of two channels) must agree to this tolerance (mm and cosines).
AFFINE_ATOL = 1e-3
AFFINE_RTOL = 1e-4


@dataclass(frozen=True)
class Geometry:
    """Where an array lives in the world, and how to go back to its file's grid.

    Attributes:
        affine: The file's 4×4 voxel→world (RAS mm) affine.
        shape: The file's spatial shape (its own axis order).
        canonical_affine: The 4×4 affine of the canonical (z, y, x) = (S, A, R) grid.
        spacing: Voxel size in mm along canonical (z, y, x).
        axcodes: The file's orientation codes, e.g. ``("L", "P", "S")``.
    """

    affine: tuple[tuple[float, ...], ...]
    shape: tuple[int, int, int]
    canonical_affine: tuple[tuple[float, ...], ...]
    spacing: tuple[float, float, float]
    axcodes: tuple[str, str, str]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape of the canonical (z, y, x) array."""
        t = self._to_canonical()
        out = [0, 0, 0]
        for src, (dst, _) in enumerate(t):
            out[int(dst)] = self.shape[src]
        return tuple(out)  # type: ignore[return-value]

    def _to_canonical(self) -> np.ndarray:
        return ornt_transform(axcodes2ornt(self.axcodes), _CANONICAL_ORNT)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """File-grid array (X, Y, Z, ...) → canonical (Z, Y, X, ...) view (flips/transposes only)."""
        return apply_orientation(array, self._to_canonical())

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Canonical (Z, Y, X) array → the file's grid, the exact inverse of :meth:`to_canonical`."""
        if tuple(array.shape[:3]) != self.canonical_shape:
            raise ValueError(f"array shape {array.shape[:3]} is not the canonical shape {self.canonical_shape}")
        return apply_orientation(array, ornt_transform(_CANONICAL_ORNT, axcodes2ornt(self.axcodes)))

    def same_grid(self, other: Geometry) -> bool:
        """True when both describe the same voxel grid (shape and affine within tolerance)."""
        return self.shape == other.shape and np.allclose(
            np.asarray(self.affine), np.asarray(other.affine), atol=AFFINE_ATOL, rtol=AFFINE_RTOL
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "affine": [list(r) for r in self.affine],
            "shape": list(self.shape),
            "canonical_affine": [list(r) for r in self.canonical_affine],
            "spacing": list(self.spacing),
            "axcodes": list(self.axcodes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Geometry:
        return cls(
            affine=tuple(tuple(float(v) for v in r) for r in data["affine"]),
            shape=tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
            canonical_affine=tuple(tuple(float(v) for v in r) for r in data["canonical_affine"]),
            spacing=tuple(float(v) for v in data["spacing"]),  # type: ignore[arg-type]
            axcodes=tuple(str(v) for v in data["axcodes"]),  # type: ignore[arg-type]
        )

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: Sequence[int]) -> Geometry:
        """Geometry of a file with this affine and spatial shape."""
        affine = np.asarray(affine, dtype=np.float64)
        shape = tuple(int(s) for s in shape)
        ornt = io_orientation(affine)
        axcodes = tuple(ornt2axcodes(ornt))
        to_canon = ornt_transform(ornt, _CANONICAL_ORNT)
        canon = affine @ inv_ornt_aff(to_canon, shape)
        spacing = tuple(float(v) for v in np.linalg.norm(canon[:3, :3], axis=0))
        return cls(
            affine=tuple(tuple(float(v) for v in r) for r in affine),
            shape=shape,  # type: ignore[arg-type]
            canonical_affine=tuple(tuple(float(v) for v in r) for r in canon),
            spacing=spacing,  # type: ignore[arg-type]
            axcodes=axcodes,  # type: ignore[arg-type]
        )

    @classmethod
    def from_canonical_spec(
        cls,
        canonical_shape: Sequence[int],
        spacing: Sequence[float],
        axcodes: Sequence[str] = ("R", "A", "S"),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> Geometry:
        """A file geometry with orientation ``axcodes`` whose canonical grid has the given shape/spacing.

        Used to write synthetic data in any orientation: the canonical (z, y, x) array is mapped onto a
        file grid stored as ``axcodes`` with voxel sizes ``spacing`` (canonical z, y, x order) and the
        world position ``origin`` (RAS mm) for file voxel (0, 0, 0).
        """
        ornt = axcodes2ornt(tuple(axcodes))
        if np.isnan(ornt).any() or sorted(int(a) for a in ornt[:, 0]) != [0, 1, 2]:
            raise ValueError(f"axcodes {tuple(axcodes)} do not name three distinct axes")
        file_shape = [0, 0, 0]
        affine = np.eye(4)
        for file_axis, (world_axis, flip) in enumerate(ornt):
            world_axis = int(world_axis)
            canon_axis = 2 - world_axis  # canonical axes are (S, A, R) = world (2, 1, 0)
            file_shape[file_axis] = int(canonical_shape[canon_axis])
            column = np.zeros(3)
            column[world_axis] = float(spacing[canon_axis]) * float(flip)
            affine[:3, file_axis] = column
        affine[:3, 3] = np.asarray(origin, dtype=np.float64)
        return cls.from_affine(affine, file_shape)


def strip_nifti_suffix(name: str) -> str | None:
    """``case_0000`` for ``case_0000.nii.gz``; None when the name is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _gzip_module():
    """python-isal's igzip (2–3× faster gzip, same format) when installed, else the standard library's."""
    try:
        from isal import igzip

        return igzip
    except ImportError:  # pragma: no cover - isal is a dependency; keep working without it
        import gzip

        return gzip


def _load(path: Path, full: bool = False) -> nib.Nifti1Image:
    """Load a NIfTI image; ``full`` decompresses a ``.gz`` file in one call (fast) instead of streaming.

    Raises:
        UserError: missing, empty, unreadable, truncated, or spacing nibabel would silently "fix".
    """
    path = Path(path)
    if not path.exists():
        raise UserError("file not found", path)
    if path.is_dir():
        raise UserError("is a folder, not a NIfTI file", path)
    if path.stat().st_size == 0:
        raise UserError("file is empty", path)
    if full and path.name.endswith(".gz"):
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic; a mis-named uncompressed file is read as it is
            try:
                raw = _gzip_module().decompress(raw)
            except Exception as exc:  # zlib/isal errors, EOFError for truncated streams
                raise UserError(f"cannot decompress, file truncated or corrupt ({type(exc).__name__})", path) from None
        _check_header_block(raw[:348], path)
        for cls in (nib.Nifti1Image, nib.Nifti2Image):
            try:
                return cls.from_bytes(raw)
            except Exception:
                continue
        raise UserError("not a readable NIfTI file (decompressed, but no NIfTI-1/2 header)", path)
    _check_header_block(_first_bytes(path, 348), path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for junk files
        raise UserError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UserError(f"not a NIfTI image (nibabel read it as {type(img).__name__})", path)
    return img


def _first_bytes(path: Path, n: int) -> bytes:
    try:
        opener = _gzip_module().open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            return fh.read(n)
    except Exception:  # unreadable: nibabel's load reports it with its own message
        return b""


def _check_header_block(block: bytes, path: Path) -> None:
    """Spacing problems that nibabel would silently "fix" (it sets zero pixdims to 1) are errors here."""
    if len(block) < 348:
        return
    try:
        header = nib.Nifti1Header(block, check=False)
    except Exception:
        return
    if int(header["sizeof_hdr"]) != 348 or int(header["sform_code"]) != 0:
        return  # NIfTI-2, or the affine comes from the sform: pixdim does not define the grid
    dims = int(header["dim"][0])
    zooms = np.asarray(header["pixdim"][1 : 1 + min(max(dims, 1), 3)], dtype=np.float64)
    if not np.isfinite(zooms).all():
        raise UserError(f"voxel spacing is NaN or Inf in the header (pixdim {tuple(zooms)})", path)
    if (zooms <= 0).any():
        raise UserError(f"zero or negative voxel spacing in the header (pixdim {tuple(zooms)})", path)


def read_geometry(path: str | Path) -> Geometry:
    """The geometry of a NIfTI file from its header only (no voxel data read)."""
    img = _load(Path(path))
    shape = _spatial_shape(img.shape, Path(path))
    return _checked_geometry(img.affine, shape, Path(path))


def _spatial_shape(shape: Sequence[int], path: Path) -> tuple[int, int, int]:
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) != 3:
        kind = f"{len(dims)}D" if len(dims) in (1, 2, 4, 5) else f"{len(dims)}-dimensional"
        raise UserError(f"expected a 3D volume, got a {kind} image of shape {tuple(shape)}", path)
    if min(dims) < 1:
        raise UserError(f"image has an empty axis, shape {tuple(shape)}", path)
    return tuple(int(d) for d in dims)  # type: ignore[return-value]


def _checked_geometry(affine: np.ndarray, shape: tuple[int, int, int], path: Path) -> Geometry:
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise UserError("affine holds NaN or Inf (broken spacing or orientation in the header)", path)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if (zooms <= 1e-6).any():
        raise UserError(f"zero voxel spacing {tuple(np.round(zooms, 6))} in the header", path)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise UserError("the affine is singular (axes not independent)", path)
    return Geometry.from_affine(affine, shape)


def read_volume(path: str | Path, dtype: np.dtype | type | None = np.float32) -> tuple[np.ndarray, Geometry]:
    """Read one 3D NIfTI file onto its canonical grid.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: Output dtype; None keeps the stored dtype (after scaling).

    Returns:
        ``(array[Z, Y, X], geometry)``.

    Raises:
        UserError: unreadable, truncated, not 3D, broken affine, RGB or complex voxels.
    """
    path = Path(path)
    img = _load(path, full=True)
    shape = _spatial_shape(img.shape, path)
    geometry = _checked_geometry(img.affine, shape, path)
    stored = img.get_data_dtype()
    if stored.fields is not None or stored.kind not in "biuf":
        raise UserError(f"voxels are not real numbers (stored as {stored}: RGB or complex images are not "
                        "supported)", path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated gzip streams, short files ...
        raise UserError(f"cannot read voxel data, file truncated or corrupt ({type(exc).__name__})", path) from None
    # one pass: reorient (a view) and convert while making the canonical array contiguous
    return np.ascontiguousarray(geometry.to_canonical(data.reshape(shape)), dtype=dtype), geometry


def read_image(paths: Sequence[str | Path], dtype: np.dtype | type | None = np.float32) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case (``{case}_0000``, ``_0001`` ...) as one array.

    Args:
        paths: One file per channel, in channel order.
        dtype: Output dtype (float32 by default; None keeps the stored one, e.g. int16 for CT).

    Returns:
        ``(array[C, Z, Y, X], geometry)`` with the geometry of the first channel.

    Raises:
        UserError: a channel is unreadable or on a different grid than the first.
    """
    if not paths:
        raise UserError("no channel files given")
    arrays: list[np.ndarray] = []
    first: Geometry | None = None
    for p in paths:
        arr, geom = read_volume(p, dtype=dtype)
        if first is None:
            first = geom
        elif not first.same_grid(geom):
            raise UserError(
                f"channel grid differs from {Path(paths[0]).name} (shape {geom.shape} vs {first.shape} or affine)", p
            )
        arrays.append(arr)
    assert first is not None
    return (arrays[0][None] if len(arrays) == 1 else np.stack(arrays)), first


def read_label(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a label map as ``(int16 array[Z, Y, X], geometry)``; non-integer values are an error."""
    arr, geom = read_volume(path, dtype=None)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all():
            raise UserError("label map holds NaN or Inf", path)
        if not np.array_equal(arr, np.round(arr)):
            raise UserError("label map holds non-integer values", path)
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int16).max):
        raise UserError(f"label values must lie in 0..32767, found {arr.min()}..{arr.max()}", path)
    return arr.astype(np.int16, copy=False), geom


def write_volume(
    path: str | Path,
    array: np.ndarray,
    geometry: Geometry,
    dtype: np.dtype | type,
    compress_level: int = 1,
) -> None:
    """Write a canonical (Z, Y, X) array to ``path`` with the geometry's file grid and affine, atomically.

    The file has the geometry's exact shape, affine (qform and sform) and orientation.
    """
    from segvolpipe.io.atomic import atomic_path

    path = Path(path)
    if strip_nifti_suffix(path.name) is None:
        raise UserError("output name must end with .nii or .nii.gz", path)
    data = np.asarray(geometry.from_canonical(np.asarray(array)), dtype=dtype)
    img = nib.Nifti1Image(data, np.asarray(geometry.affine, dtype=np.float64))
    img.set_qform(np.asarray(geometry.affine), code=1)
    img.set_sform(np.asarray(geometry.affine), code=1)
    img.header.set_xyzt_units("mm", "sec")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".nii.gz":
            # nibabel's gzip level 9 is slow; a low level is several times faster and nearly as small.
            raw = img.to_bytes()
            tmp.write_bytes(_gzip_module().compress(raw, compresslevel=min(compress_level, 3), mtime=0))
        else:
            nib.save(img, str(tmp))


def write_label(path: str | Path, array: np.ndarray, geometry: Geometry) -> None:
    """Write a canonical label map (uint8 when it fits, else uint16)."""
    array = np.asarray(array)
    dtype = np.uint8 if array.size == 0 or array.max() < 256 else np.uint16
    write_volume(path, array, geometry, dtype)
