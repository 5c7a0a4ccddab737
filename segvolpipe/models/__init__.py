"""Model zoo: ``segvol`` (SegVol), ``so3`` (steerable patch embedding), ``prior`` (context priors + mixture of
adapters) and ``unet`` (nnU-Net-like baseline); see :mod:`segvolpipe.models.registry`."""
