"""segvolpipe: self-configuring 3D CT/MRI segmentation with SegVol-style promptable models.

Arrays are (C, Z, Y, X) or (Z, Y, X) on a canonical grid whose axes point to Superior, Anterior and
Right (see :mod:`segvolpipe.io.nifti`). Stages talk only through files under the three roots of
:mod:`segvolpipe.paths`.
"""

__version__ = "0.1.0"
