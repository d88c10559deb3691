"""funcgrad's integrity record: the sha256 of every file and every leaf of a checkpoint.

The record ``funcgrad_integrity.json`` is written last, atomically, into each step
directory. A step counts as *good* only when its record exists, is itself intact (it
carries a sha256 of its own canonical JSON) and every file it lists still has the
recorded size and sha256. On restore every decoded leaf is hashed again and compared,
so a checkpoint that orbax can read but that decodes to different values is rejected.
Nothing here imports orbax.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .errors import TemplateMismatch

__all__ = [
    "RECORD_NAME",
    "BadCheckpoint",
    "build_record",
    "check_files",
    "compare_leaves",
    "file_sha256",
    "leaf_records",
    "read_record",
    "template_mismatch",
    "template_signature",
]

RECORD_NAME = "funcgrad_integrity.json"
_RECORD_FORMAT = "funcgrad-checkpoint-integrity"
_RECORD_VERSION = 1
_CHUNK = 1 << 20


class BadCheckpoint(Exception):
    """The checkpoint of one step is unusable; ``str(e)`` says why (internal)."""


# ----------------------------------------------------------------------------- hashing


def _host_array(leaf: Any) -> np.ndarray | None:
    """A host numpy view of one pytree leaf (typed PRNG keys as their raw key data).

    An array spread over several processes (a multi-host run) is hashed through the copy
    this process holds when it is fully replicated; an array sharded over processes has
    no single host copy, so it gives None (its files are hashed all the same).
    """
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:
            if not leaf.is_fully_replicated:
                return None
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(jax.device_get(leaf))
    return np.asarray(leaf)


def _leaf_record(path: Any, leaf: Any) -> dict[str, Any]:
    host = _host_array(leaf)
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        dtype = np.asarray(leaf).dtype
    digest = None
    if host is not None:
        arr = np.ascontiguousarray(host)
        digest = hashlib.sha256(arr.view(np.uint8).reshape(-1)).hexdigest()
    return {
        "path": jax.tree_util.keystr(path),
        "shape": list(np.shape(leaf)),
        "dtype": str(dtype),
        "sha256": digest,
    }


def leaf_records(tree: Any) -> list[dict[str, Any]]:
    """Path, shape, dtype and sha256 of the bytes of every leaf, in flattening order.

    The sha256 is None for an array sharded over several processes (no host holds it).

    Args:
        tree: Any pytree of arrays and scalars.

    Returns:
        One dict per leaf.
    """
    return [_leaf_record(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def template_signature(template: Any) -> list[tuple[str, list[int], str]]:
    """Path, shape and dtype of every leaf of ``template`` (arrays or ShapeDtypeStructs).

    Args:
        template: A pytree.

    Returns:
        One ``(path, shape, dtype)`` per leaf.
    """
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            dtype = np.asarray(leaf).dtype
        out.append((jax.tree_util.keystr(path), list(np.shape(leaf)), str(dtype)))
    return out


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in chunks.

    Args:
        path: The file.

    Returns:
        The digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def data_files(step_dir: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``step_dir`` except the integrity record (and its temp).

    Args:
        step_dir: One step's directory.

    Returns:
        ``(relative posix path, path)`` pairs in a stable order.
    """
    out = []
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            rel = p.relative_to(step_dir).as_posix()
            if rel == RECORD_NAME or rel.startswith(RECORD_NAME + "."):
                continue
            out.append((rel, p))
    return out


def canonical(body: dict[str, Any]) -> bytes:
    """The canonical JSON bytes of a record body (what its own sha256 covers).

    Args:
        body: The record without ``record_sha256``.

    Returns:
        Sorted-key, compact JSON bytes.
    """
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------- writing


def fsync_dir(path: Path) -> None:
    """Flushes a directory entry to disk where the platform allows (best effort).

    Args:
        path: The directory.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` via a temp file, fsync and ``os.replace``.

    Args:
        path: The destination.
        obj: JSON-serialisable data.
    """
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def build_record(
    step: int,
    step_dir: Path,
    state: Any,
    leaves: list[dict[str, Any]],
    metadata: dict[str, Any],
    orbax_version: str,
    created_unix: float,
) -> dict[str, Any]:
    """The signed integrity record of a freshly written step directory.

    Args:
        step: The step.
        step_dir: Its directory (every file in it is hashed).
        state: The saved pytree (for its tree structure).
        leaves: :func:`leaf_records` of ``state``, taken before the save.
        metadata: The user's JSON metadata.
        orbax_version: The orbax-checkpoint version that wrote the files.
        created_unix: Creation time, seconds since the epoch.

    Returns:
        The record, including its own ``record_sha256``.
    """
    files = {
        rel: {"size": p.stat().st_size, "sha256": file_sha256(p)} for rel, p in data_files(step_dir)
    }
    body = {
        "format": _RECORD_FORMAT,
        "version": _RECORD_VERSION,
        "step": step,
        "created_unix": created_unix,
        "orbax_checkpoint_version": orbax_version,
        "treedef": str(jax.tree_util.tree_structure(state)),
        "leaves": leaves,
        "files": files,
        "metadata": metadata,
    }
    return dict(body, record_sha256=hashlib.sha256(canonical(body)).hexdigest())


# ----------------------------------------------------------------------------- checking


def read_record(step_dir: Path, step: int) -> dict[str, Any]:
    """Reads and authenticates the integrity record of ``step``.

    Args:
        step_dir: The step's directory.
        step: The step the record must be for.

    Returns:
        The record without its ``record_sha256``.

    Raises:
        BadCheckpoint: The record is missing, unreadable, or does not check out.
    """
    path = step_dir / RECORD_NAME
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise BadCheckpoint(f"integrity record {RECORD_NAME} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadCheckpoint(f"integrity record is unreadable ({e})") from None
    if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT:
        raise BadCheckpoint("integrity record has an unknown format")
    digest = record.pop("record_sha256", None)
    if digest != hashlib.sha256(canonical(record)).hexdigest():
        raise BadCheckpoint("integrity record is corrupted (its own checksum differs)")
    if record.get("version") != _RECORD_VERSION:
        raise BadCheckpoint(f"integrity record version {record.get('version')!r}")
    if record.get("step") != step:
        raise BadCheckpoint(f"integrity record is for step {record.get('step')!r}")
    return record


def check_files(step_dir: Path, step: int) -> str | None:
    """None if the step's files match its integrity record, else the reason.

    Args:
        step_dir: The step's directory.
        step: The step.

    Returns:
        None for a good step, else a short reason such as ``"file x is missing"``.
    """
    if not step_dir.is_dir():
        return "step directory is missing"
    try:
        record = read_record(step_dir, step)
    except BadCheckpoint as e:
        return str(e)
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return "integrity record lists no files"
    for rel, want in sorted(files.items()):
        p = step_dir / rel
        if not p.is_file():
            return f"file {rel} is missing"
        size = p.stat().st_size
        if size != want["size"]:
            return f"file {rel} has {size} bytes, expected {want['size']} (truncated?)"
        if file_sha256(p) != want["sha256"]:
            return f"file {rel} is corrupted (sha256 mismatch)"
    return None


def compare_leaves(leaves: list[dict[str, Any]], restored: Any) -> str | None:
    """None if ``restored`` hashes to the recorded ``leaves``, else the first difference.

    Args:
        leaves: The record's leaf list.
        restored: The pytree orbax returned.

    Returns:
        None, or a description of the first mismatching leaf.
    """
    got = leaf_records(restored)
    if len(got) != len(leaves):
        return f"{len(got)} leaves restored, {len(leaves)} recorded"
    for w, g in zip(leaves, got, strict=True):
        for field in ("path", "shape", "dtype", "sha256"):
            if field == "sha256" and (w[field] is None or g[field] is None):
                continue  # sharded over processes on one side: the files were checked
            if w[field] != g[field]:
                return f"leaf {w['path']}: {field} {g[field]!r} != recorded {w[field]!r}"
    return None


def template_mismatch(
    step: int, want: list[tuple[str, list[int], str]], have: list[tuple[str, list[int], str]]
) -> TemplateMismatch:
    """Why a restore template does not fit the checkpoint of ``step``, as an error.

    Args:
        step: The step.
        want: :func:`template_signature`-style leaves recorded in the checkpoint.
        have: The same for the template.

    Returns:
        A :class:`TemplateMismatch` listing the leaves only one side has; its message is
        one line naming the first differing leaves.
    """
    wp = {p: (s, d) for p, s, d in want}
    hp = {p: (s, d) for p, s, d in have}
    missing = [p for p in wp if p not in hp]
    extra = [p for p in hp if p not in wp]
    return TemplateMismatch(_mismatch_line(step, wp, hp, missing, extra), step, missing, extra)


def _mismatch_line(step: int, wp: dict, hp: dict, missing: list[str], extra: list[str]) -> str:
    head = (
        f"CheckpointManager.restore: argument 'template' does not match the checkpoint "
        f"of step {step}"
    )
    if missing or extra:
        return (
            f"{head}: leaves only in the checkpoint {missing[:5]}, only in the template {extra[:5]}"
        )
    for p, (s, d) in wp.items():
        if hp[p] != (s, d):
            return (
                f"{head}: leaf {p} expected {s} {d} (the checkpoint), got {hp[p][0]} "
                f"{hp[p][1]} (the template)"
            )
    return f"{head}: leaf order differs"
