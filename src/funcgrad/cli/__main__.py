"""``python -m funcgrad.cli``: the same as the ``funcgrad`` command."""

from . import console

console()
