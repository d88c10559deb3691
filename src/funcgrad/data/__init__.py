"""Small classification datasets for examples and tests, in pure NumPy.

Every loader returns a :class:`Dataset` holding a train/test split with
``float32`` features of shape ``(samples, features)`` and ``int32`` class labels
of shape ``(samples,)``. Splits are stratified (each class keeps roughly the
same share in both parts) and fully determined by ``seed``.

* :func:`digits` -- the 8x8 UCI handwritten digits (1797 images, 10 classes),
  shipped with this package as ``digits.npz``; see :data:`DIGITS_ATTRIBUTION`.
* :func:`spirals` -- interleaved synthetic 2-D spirals.
* :func:`load_npz` -- a user's own ``.npz`` file with arrays ``x`` and ``y``.

Modules: :mod:`~funcgrad.data.dataset`, :mod:`~funcgrad.data.bundled`,
:mod:`~funcgrad.data.synthetic`, :mod:`~funcgrad.data.npz`. No pickle is ever used to
read data: every array is loaded with ``allow_pickle=False``.
"""

from .bundled import DIGITS_ATTRIBUTION, digits
from .dataset import Dataset
from .npz import load_npz
from .synthetic import spirals

__all__ = [
    "DIGITS_ATTRIBUTION",
    "Dataset",
    "digits",
    "load_npz",
    "spirals",
]
