"""JAX's persistent compilation cache in a per-user directory: compile once per shape.

``funcgrad train`` and ``funcgrad check`` turn it on; the API leaves it to the caller
(:func:`enable_compilation_cache`), since it changes process-wide JAX configuration.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["default_cache_dir", "enable_compilation_cache"]

#: Set to ``0`` to keep the command line from using the cache.
ENV_SWITCH = "FUNCGRAD_COMPILATION_CACHE"


def default_cache_dir() -> Path:
    """The per-user cache directory: ``$FUNCGRAD_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/funcgrad/jax``, else ``~/.cache/funcgrad/jax``.

    Returns:
        The directory (not created).

    Examples:
        >>> default_cache_dir().is_absolute()
        True
    """
    if os.environ.get("FUNCGRAD_CACHE_DIR"):
        return Path(os.environ["FUNCGRAD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "funcgrad" / "jax"


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache, so a later process with the same
    programs loads them instead of compiling.

    Every compiled program is cached, however quickly it compiled (JAX's default skips
    those under a second, which is all of a small model's). The cache is trusted code:
    keep it in a directory only you can write.

    Args:
        path: the cache directory; default :func:`default_cache_dir`. Created if missing.

    Returns:
        The directory in use, or ``None`` if it cannot be created (a warning says why;
        JAX then compiles as usual).

    Examples:
        Before the first compilation (it changes JAX's configuration for the process)::

            import funcgrad
            funcgrad.enable_compilation_cache()  # ~/.cache/funcgrad/jax
    """
    import jax

    target = Path(path) if path is not None else default_cache_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        warnings.warn(f"enable_compilation_cache: cannot create {str(target)!r} "
                      f"({exc.strerror or exc}); compiling without a persistent cache",
                      RuntimeWarning, stacklevel=2)
        return None
    if jax.config.jax_compilation_cache_dir not in (None, str(target)):
        try:  # the cache is opened once per process: point it at the new directory
            from jax._src import compilation_cache

            compilation_cache.reset_cache()
        except (ImportError, AttributeError):
            pass
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return target


def enable_for_cli() -> Path | None:
    """The command line's cache: on unless ``FUNCGRAD_COMPILATION_CACHE=0``."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return enable_compilation_cache()
