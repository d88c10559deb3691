"""Shared by the benchmark scripts: the JSON record of one run."""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any

import jax
import optax


def write_json(path: str, benchmark: str, results: Any, **extra: Any) -> None:
    """Write ``results`` with the command, date and versions that produced them."""
    doc = {
        "benchmark": benchmark,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__, "optax": optax.__version__,
        "backend": jax.default_backend(),
        **extra,
        "results": results,
    }
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=2)
    print(f"wrote {path}")
