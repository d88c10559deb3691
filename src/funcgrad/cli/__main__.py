"""``python -m funcgrad.cli``: the same as the ``funcgrad`` command."""

import sys

from . import main

sys.exit(main())
