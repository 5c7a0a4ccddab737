"""Pseudo-masks: 3D Felzenszwalb–Huttenlocher regions, cleaned, merged with the ground truth.

SegVol trains on these so that a model learns anatomy rather than which dataset labels which organ.
:mod:`.graph` segments (numba union–find), :mod:`.clean` filters and merges, :mod:`.metrics` scores
against the labels, :mod:`.stage` runs it over a preprocessed dataset.
"""
