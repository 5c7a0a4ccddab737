"""Preprocessing: normalisation registry, cropping, resampling, one case forward and back."""
