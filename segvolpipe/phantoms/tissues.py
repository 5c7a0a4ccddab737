"""Tissue classes of the phantoms; :mod:`.contrast` gives each an intensity per modality."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Tissue classes; :mod:`segvolpipe.phantoms.contrast` gives each an intensity per modality."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    VISCERAL_FAT = 3
    BOWEL = 4
    BOWEL_GAS = 5
    LUNG = 6
    CANCELLOUS = 7
    CORTICAL = 8
    DISC = 9
    CSF = 10
    LIVER = 11
    LIVER_VESSEL = 12
    LIVER_LESION = 13
    SPLEEN = 14
    KIDNEY_CORTEX = 15
    KIDNEY_MEDULLA = 16
    AORTA = 17
    IVC = 18
    STOMACH_WALL = 19
    STOMACH_CONTENT = 20
    GAS = 21
    PANCREAS = 22
    GALLBLADDER = 23
    BOWEL_CONTENT = 24


N_TISSUES = len(Tissue)
FREE = np.zeros(N_TISSUES, dtype=bool)
FREE[[Tissue.VISCERAL_FAT, Tissue.BOWEL, Tissue.BOWEL_GAS, Tissue.LUNG]] = True
