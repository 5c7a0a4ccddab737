"""Dataset fingerprint: per-case geometry, per-channel foreground intensity statistics, label volumes."""

from segvolpipe.fingerprint.case import CaseTask, crop_box, fingerprint_case, nonzero_bbox
from segvolpipe.fingerprint.dataset import (
    ChannelStats,
    Fingerprint,
    compute_fingerprint,
    load_fingerprint,
    raw_input_hash,
    save_fingerprint,
)

__all__ = [
    "CaseTask",
    "ChannelStats",
    "Fingerprint",
    "compute_fingerprint",
    "crop_box",
    "fingerprint_case",
    "load_fingerprint",
    "nonzero_bbox",
    "raw_input_hash",
    "save_fingerprint",
]
