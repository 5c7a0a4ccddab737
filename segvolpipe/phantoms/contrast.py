"""Intensities of the phantoms: CT in Hounsfield units, T1-/T2-like MRI in arbitrary units.

Rendering a tissue map (``[Z, Y, X]`` on the canonical grid, see :mod:`.tissues`):

1. a per-case mean per tissue (jittered around textbook values; contrast enhancement varies);
2. smooth texture inside tissues (coarse drift plus finer mottling, strongest in bone and faeces);
3. partial-volume blur: a Gaussian of σ 0.6–1 voxel per axis;
4. MRI only: a smooth multiplicative bias field (±20–30 %);
5. correlated noise: Gaussian-filtered white noise, 10–25 HU std for CT; for MRI complex Gaussian
   noise whose magnitude is taken (Rician: the air background is small and positive, never -1000).

CT values are rounded and clipped to [-1024, 3071] (stored as int16). MRI values are stored per case
either as uint16 (rounded, two cases in three) or float32 (one in three), as real MRI collections mix
both; :func:`render` returns the values exactly as stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from segvolpipe.phantoms.shapes import smooth_field
from segvolpipe.phantoms.tissues import N_TISSUES, Tissue

CT_RANGE = (-1024.0, 3071.0)
T = Tissue

# (mean, jitter std) per tissue. CT in HU, portal-venous phase: the contrast-enhanced abdominal CT of the
# public datasets SegVol and nnU-Net are measured on (BTCV, AMOS, FLARE). Enhancing organs scale together
# per case with the bolus timing (see ct_table).
_CT: dict[Tissue, tuple[float, float]] = {
    T.AIR: (-1000, 0), T.FAT: (-100, 8), T.MUSCLE: (55, 5), T.VISCERAL_FAT: (-95, 8), T.BOWEL: (60, 8),
    T.BOWEL_GAS: (-980, 10), T.LUNG: (-850, 30), T.DISC: (85, 10), T.CSF: (15, 4), T.LIVER: (105, 8),
    T.SPLEEN: (118, 8), T.KIDNEY_CORTEX: (180, 15), T.KIDNEY_MEDULLA: (100, 8), T.AORTA: (160, 20),
    T.IVC: (130, 15), T.STOMACH_WALL: (75, 6), T.STOMACH_CONTENT: (12, 6), T.GAS: (-1000, 0),
    T.PANCREAS: (95, 6), T.GALLBLADDER: (8, 4), T.BOWEL_CONTENT: (-20, 30),
    T.CANCELLOUS: (300, 30), T.CORTICAL: (950, 120), T.LIVER_VESSEL: (0, 0), T.LIVER_LESION: (0, 0),
}
# MRI in arbitrary units: T1 (fat bright, liver > spleen, fluid dark), T2 (fluid bright, spleen > liver).
_T1: dict[Tissue, float] = {
    T.AIR: 0, T.FAT: 900, T.MUSCLE: 330, T.VISCERAL_FAT: 880, T.BOWEL: 300, T.BOWEL_GAS: 5, T.LUNG: 20,
    T.CANCELLOUS: 600, T.CORTICAL: 40, T.DISC: 250, T.CSF: 120, T.LIVER: 520, T.LIVER_VESSEL: 150,
    T.LIVER_LESION: 300, T.SPLEEN: 380, T.KIDNEY_CORTEX: 420, T.KIDNEY_MEDULLA: 300, T.AORTA: 120,
    T.IVC: 140, T.STOMACH_WALL: 350, T.STOMACH_CONTENT: 110, T.GAS: 5, T.PANCREAS: 560,
    T.GALLBLADDER: 100, T.BOWEL_CONTENT: 200,
}
_T2: dict[Tissue, float] = {
    T.AIR: 0, T.FAT: 700, T.MUSCLE: 160, T.VISCERAL_FAT: 680, T.BOWEL: 380, T.BOWEL_GAS: 5, T.LUNG: 15,
    T.CANCELLOUS: 450, T.CORTICAL: 30, T.DISC: 600, T.CSF: 1100, T.LIVER: 220, T.LIVER_VESSEL: 80,
    T.LIVER_LESION: 700, T.SPLEEN: 480, T.KIDNEY_CORTEX: 450, T.KIDNEY_MEDULLA: 580, T.AORTA: 60,
    T.IVC: 90, T.STOMACH_WALL: 250, T.STOMACH_CONTENT: 1000, T.GAS: 5, T.PANCREAS: 330,
    T.GALLBLADDER: 1100, T.BOWEL_CONTENT: 800,
}
# Texture: (coarse drift std, fine mottling std), CT in HU, MRI as a fraction of the tissue's value.
_TEXTURE_CT: dict[Tissue, tuple[float, float]] = {
    T.FAT: (6, 6), T.VISCERAL_FAT: (8, 10), T.MUSCLE: (4, 5), T.BOWEL: (10, 12), T.LUNG: (30, 30),
    T.CANCELLOUS: (30, 70), T.CORTICAL: (60, 80), T.LIVER: (4, 4), T.SPLEEN: (4, 5), T.PANCREAS: (4, 8),
    T.KIDNEY_CORTEX: (8, 6), T.BOWEL_CONTENT: (40, 120), T.STOMACH_CONTENT: (6, 10),
}
_ENHANCING = (T.AORTA, T.IVC, T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA, T.LIVER, T.SPLEEN, T.PANCREAS, T.STOMACH_WALL)


@dataclass(frozen=True)
class Rendered:
    """A rendered image and the dtype it is stored with.

    Attributes:
        image: float32 ``[Z, Y, X]``, holding exactly the values stored in the file.
        dtype: ``np.int16`` (CT), ``np.uint16`` or ``np.float32`` (MRI).
    """

    image: np.ndarray
    dtype: type


def ct_table(rng: np.random.Generator) -> np.ndarray:
    """float32 ``[N_TISSUES]`` mean HU per tissue for one case (jittered, random enhancement)."""
    table = np.zeros(N_TISSUES, dtype=np.float32)
    for tissue, (mean, std) in _CT.items():
        table[tissue] = mean + (rng.normal(0, std) if std else 0.0)
    table[T.CANCELLOUS] = rng.uniform(250, 350)
    table[T.CORTICAL] = rng.uniform(700, 1200)
    enhancement = rng.uniform(0.85, 1.15)  # bolus timing: every enhancing tissue moves together
    for tissue in _ENHANCING:
        table[tissue] = 40 + (table[tissue] - 40) * enhancement
    table[T.LIVER_VESSEL] = table[T.LIVER] + rng.uniform(20, 60)  # portal and hepatic veins, enhanced
    table[T.LIVER_LESION] = table[T.LIVER] - rng.uniform(30, 50)  # hypo-enhancing lesions
    return table


def mri_table(contrast: str, rng: np.random.Generator) -> np.ndarray:
    """float32 ``[N_TISSUES]`` mean signal per tissue (arbitrary units, random global scale)."""
    values = _T1 if contrast == "t1" else _T2
    table = np.zeros(N_TISSUES, dtype=np.float32)
    scale = rng.uniform(0.6, 1.6)
    for tissue, mean in values.items():
        table[tissue] = mean * scale * rng.uniform(0.92, 1.08)
    return table


def _texture(tissue: np.ndarray, table: np.ndarray, relative: bool, rng: np.random.Generator) -> np.ndarray:
    coarse_amp = np.zeros(N_TISSUES, dtype=np.float32)
    fine_amp = np.zeros(N_TISSUES, dtype=np.float32)
    if relative:
        coarse_amp[:] = 0.03 * np.abs(table)
        fine_amp[:] = 0.03 * np.abs(table)
        fine_amp[[T.BOWEL_CONTENT, T.CANCELLOUS]] *= 4
    else:
        for t, (coarse, fine) in _TEXTURE_CT.items():
            coarse_amp[t], fine_amp[t] = coarse, fine
    shape = tissue.shape
    coarse = smooth_field(shape, (5, 8, 8), rng)
    fine = smooth_field(shape, (max(shape[0] // 3, 4), max(shape[1] // 3, 4), max(shape[2] // 3, 4)), rng)
    return coarse_amp[tissue] * coarse + fine_amp[tissue] * fine


def _correlated_noise(shape: tuple[int, ...], sigma: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-std Gaussian-filtered white noise, float32 of ``shape``."""
    noise = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap", truncate=3.0)
    std = float(noise.std())
    return noise / np.float32(std) if std > 0 else noise


def render(tissue: np.ndarray, modality: str, mri_contrast: str, rng: np.random.Generator) -> Rendered:
    """Turn a tissue map into an image.

    Args:
        tissue: uint8 ``[Z, Y, X]`` :class:`~.tissues.Tissue` map on the canonical grid.
        modality: ``"ct"`` or ``"mri"``.
        mri_contrast: ``"t1"`` or ``"t2"`` (MRI only).
        rng: Random generator (the case's contrast stream).

    Returns:
        The :class:`Rendered` image, float32 ``[Z, Y, X]`` with the stored values.
    """
    mri = modality == "mri"
    table = mri_table(mri_contrast, rng) if mri else ct_table(rng)
    image = table[tissue] + _texture(tissue, table, mri, rng)
    blur = (rng.uniform(0.6, 1.0), *(rng.uniform(0.6, 1.0),) * 2)
    image = gaussian_filter(image, blur, mode="nearest", truncate=3.0)
    noise_sigma = (rng.uniform(0.3, 0.7), *(rng.uniform(0.5, 1.0),) * 2)
    if not mri:
        image += _correlated_noise(image.shape, noise_sigma, rng) * np.float32(rng.uniform(10, 25))
        image = np.clip(np.round(image), *CT_RANGE).astype(np.float32)
        return Rendered(image, np.int16)
    bias = smooth_field(image.shape, (3, 4, 4), rng)
    bias *= np.float32(rng.uniform(0.2, 0.3) / max(float(np.abs(bias).max()), 1e-6))
    image *= 1 + bias
    sigma = np.float32(rng.uniform(0.02, 0.05) * table[T.MUSCLE])
    real = image + sigma * _correlated_noise(image.shape, noise_sigma, rng)
    imag = sigma * _correlated_noise(image.shape, noise_sigma, rng)
    image = np.sqrt(real * real + imag * imag)
    if rng.random() < 2 / 3:
        return Rendered(np.clip(np.round(image), 0, 65535).astype(np.float32), np.uint16)
    return Rendered(image.astype(np.float32, copy=False), np.float32)
