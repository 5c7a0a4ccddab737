"""Synthetic abdominal CT/MRI phantom datasets in nnU-Net v2 raw format (demo, tests, benchmarks).

Each case is a miniature but complete abdomen on the canonical (z, y, x) = (Superior, Anterior, Right)
grid: body outline with subcutaneous fat and muscle wall, spine and ribs, liver, spleen, kidneys
(cortex and medulla, in perirenal and sinus fat), aorta, stomach (with a gas pocket), pancreas, plus
unlabelled distractors (IVC, iliac arteries, gallbladder, bowel, colon, lung bases). See :mod:`.anatomy`
for the body model, :mod:`.contrast` for CT/MRI intensities and :mod:`.case` for the file geometry.

Example:
    >>> from segvolpipe.phantoms import PhantomOptions, make_phantom_dataset
    >>> make_phantom_dataset(900, PhantomOptions(n_train=8, n_test=2), workers=2)  # doctest: +SKIP
"""

from segvolpipe.phantoms.case import make_phantom_case
from segvolpipe.phantoms.dataset import made_with_other_options, make_phantom_dataset
from segvolpipe.phantoms.options import ORGANS, PhantomOptions, PhantomResult

__all__ = ["ORGANS", "PhantomOptions", "PhantomResult", "made_with_other_options", "make_phantom_case",
           "make_phantom_dataset"]
