"""Data parallelism by ``jit`` + sharding (GSPMD), on one host or many.

There is no ``pmap`` and no hand-written ``psum`` here. A train step is jitted once, as for a
single device; its inputs carry shardings instead:

* the batch is *sharded* along its batch axis over a 1-D device mesh (:func:`shard_batch`),
* the parameters and optimizer state are *replicated* on every device (:func:`replicate`).

XLA's SPMD partitioner then splits the computation so that each device works on its slice
of the batch, and it inserts the all-reduce that sums the per-device gradient contributions
(the gradient of a mean over the batch is a sum over the batch). The updated parameters come
out replicated, so the same step function runs unchanged on 1, 4 or 4096 devices.

Multi-host runs call :func:`initialize_distributed` *first*, before anything else touches
JAX; afterwards ``jax.devices()`` lists the devices of every process, a mesh built from them
spans all hosts, and each process contributes its own slice of the global batch with
:func:`global_batch_from_local`.

Nothing in this module touches a JAX backend at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "batch_sharding",
    "check_batch_size",
    "describe_devices",
    "global_batch_from_local",
    "initialize_distributed",
    "local_mesh",
    "place_batch",
    "replicate",
    "replicated",
    "shard_batch",
]


def local_mesh(devices: Sequence[Any] | None = None, axis_name: str = "data") -> Mesh:
    """A 1-D device mesh for data parallelism.

    The mesh is built with :class:`jax.sharding.Mesh` directly (axis type ``Auto``), so
    jitted functions are partitioned by GSPMD from their input shardings alone; no mesh
    context manager is needed.

    Args:
        devices: the devices to use, in order. Defaults to ``jax.local_devices()``, the
            devices of this process. In a multi-process run pass ``jax.devices()`` to span
            every host.
        axis_name: the name of the single mesh axis.

    Returns:
        A mesh of shape ``(len(devices),)`` with axis ``axis_name``.

    Raises:
        ValueError: if ``devices`` is empty, contains duplicates, or ``axis_name`` is empty.
    """
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"local_mesh: argument 'axis_name' must be a non-empty string; "
                         f"got {axis_name!r}")
    devs = list(jax.local_devices() if devices is None else devices)
    if not devs:
        raise ValueError("local_mesh: argument 'devices' must hold at least one device; "
                         "got an empty device list")
    if len({id(d) for d in devs}) != len(devs):
        raise ValueError(f"local_mesh: argument 'devices' must not repeat a device; got {devs}")
    # Auto axis type spelled out: GSPMD propagation, not explicit sharding-in-types, and
    # immune to a change of the default between JAX versions.
    return Mesh(np.array(devs, dtype=object), (axis_name,), axis_types=(AxisType.Auto,))


def _batch_axes(mesh: Mesh) -> str | tuple[str, ...]:
    names = tuple(mesh.axis_names)
    return names[0] if len(names) == 1 else names


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Sharding that splits array axis ``axis`` over all devices of ``mesh``.

    Args:
        mesh: the device mesh; with several mesh axes the batch is split over all of them.
        axis: which array axis holds the batch (``0`` for ``(B, ...)``, ``1`` for a stacked
            ``(K, B, ...)`` batch). Earlier axes are replicated.

    Returns:
        ``NamedSharding(mesh, PartitionSpec(None, ..., <mesh axes>))``.

    Raises:
        ValueError: if ``axis`` is not a non-negative int.
    """
    if not isinstance(axis, int) or isinstance(axis, bool) or axis < 0:
        raise ValueError(f"batch_sharding: argument 'axis' must be a non-negative int; "
                         f"got {axis!r}")
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), _batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that places a full copy of an array on every device of ``mesh``.

    Args:
        mesh: the device mesh.

    Returns:
        ``NamedSharding(mesh, PartitionSpec())``.
    """
    return NamedSharding(mesh, PartitionSpec())


def _suggest(batch_size: int, n: int) -> str:
    lower, upper = (batch_size // n) * n, (batch_size // n + 1) * n
    return f"use {lower} or {upper}" if lower > 0 else f"use {upper}"


def check_batch_size(batch_size: int, mesh: Mesh, *, name: str = "batch_size") -> None:
    """Check that ``batch_size`` splits evenly over the devices of ``mesh``.

    Args:
        batch_size: the global batch size (summed over all devices and processes).
        mesh: the device mesh the batch will be sharded over.
        name: how to call the value in the error message (e.g. a CLI flag).

    Raises:
        ValueError: if ``batch_size`` is not a positive int divisible by ``mesh.size``, e.g.
            ``data-parallel training over 4 devices needs a batch size divisible by 4; got
            batch_size=30 (use 28 or 32)``.
    """
    n = int(mesh.size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"{name} must be an int; got {batch_size!r}")
    batch_size = int(batch_size)
    if batch_size <= 0:
        raise ValueError(f"{name} must be positive; got {name}={batch_size}")
    if batch_size % n:
        raise ValueError(
            f"data-parallel training over {n} devices needs a batch size divisible by {n}; "
            f"got {name}={batch_size} ({_suggest(batch_size, n)})"
        )


def _check_leaf(path: Any, leaf: Any, mesh: Mesh, axis: int) -> None:
    shape = tuple(np.shape(leaf))
    where = jax.tree_util.keystr(path) or "<root>"
    if len(shape) <= axis:
        raise ValueError(
            f"shard_batch: argument 'batch' leaf {where} must have an axis {axis} to shard; "
            f"got shape {shape} with {len(shape)} dimension(s)"
        )
    n = int(mesh.size)
    if shape[axis] % n:
        raise ValueError(
            f"data-parallel training over {n} devices needs a batch size divisible by {n}; "
            f"batch leaf {where} has shape {shape} with {shape[axis]} along axis {axis} "
            f"({_suggest(shape[axis], n)})"
        )


def shard_batch(batch: Any, mesh: Mesh, axis: int = 0) -> Any:
    """Place every leaf of ``batch`` on ``mesh``, split along the batch axis.

    Use this when this process holds the *whole* global batch (one host, any number of
    local devices). In a multi-process run, where each process loads only its own slice,
    use :func:`global_batch_from_local` instead.

    Args:
        batch: a pytree of arrays (NumPy or JAX), each with the batch on axis ``axis``.
        mesh: the device mesh.
        axis: the batch axis; ``1`` for stacked ``(K, B, ...)`` batches consumed by a
            ``lax.scan`` over ``K`` steps.

    Returns:
        The same pytree of ``jax.Array`` s with sharding ``batch_sharding(mesh, axis)``.

    Raises:
        ValueError: naming the leaf path and shape, if a leaf has no axis ``axis`` or its
            size there is not divisible by the number of devices.
    """
    sharding = batch_sharding(mesh, axis)
    leaves = jax.tree_util.tree_flatten_with_path(batch)[0]
    for path, leaf in leaves:
        _check_leaf(path, leaf, mesh, axis)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a full copy of every leaf of ``tree`` (parameters, optimizer state) on ``mesh``.

    In a multi-process run every process must pass identical values (e.g. parameters
    initialised from the same seed).

    Args:
        tree: a pytree of arrays or scalars.
        mesh: the device mesh.

    Returns:
        The same pytree of ``jax.Array`` s with sharding ``replicated(mesh)``.
    """
    sharding = replicated(mesh)
    if sharding.is_fully_addressable:
        return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)

    def put(x: Any) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, host, host.shape)

    return jax.tree_util.tree_map(put, tree)


def global_batch_from_local(local_batch: Any, mesh: Mesh, axis: int = 0) -> Any:
    """Assemble a globally sharded batch from the slice this process loaded.

    Each of ``P`` processes passes its own ``local_batch`` with ``B / P`` examples on
    ``axis``; the result is one global ``jax.Array`` per leaf with ``B`` examples on
    ``axis``, sharded over every device of ``mesh`` (built from ``jax.devices()``), without
    any data crossing the network. Process ``p``'s rows land on its own devices, in order.
    With a single process this is the same as :func:`shard_batch`.

    Args:
        local_batch: a pytree of host arrays, this process's slice of the global batch.
        mesh: a mesh over the devices of all processes.
        axis: the batch axis of every leaf.

    Returns:
        The pytree of global ``jax.Array`` s, sharded as ``batch_sharding(mesh, axis)``.

    Raises:
        ValueError: naming the leaf, if its local batch does not split evenly over this
            process's devices in ``mesh``.
    """
    sharding = batch_sharding(mesh, axis)
    n_local = len(sharding.addressable_devices)
    n_proc = int(mesh.size) // max(n_local, 1)

    def put(path: Any, leaf: Any) -> jax.Array:
        host = np.asarray(leaf)
        where = jax.tree_util.keystr(path) or "<root>"
        if host.ndim <= axis:
            raise ValueError(
                f"global_batch_from_local: argument 'local_batch' leaf {where} must have an "
                f"axis {axis} to shard; got shape {host.shape} with {host.ndim} dimension(s)"
            )
        if n_local == 0 or host.shape[axis] % n_local:
            raise ValueError(
                f"global_batch_from_local: argument 'local_batch' leaf {where} must have "
                f"axis {axis} divisible by the {n_local} local devices in the mesh; got shape "
                f"{host.shape}"
            )
        global_shape = list(host.shape)
        global_shape[axis] *= n_proc
        return jax.make_array_from_process_local_data(sharding, host, tuple(global_shape))

    return jax.tree_util.tree_map_with_path(put, local_batch)


def place_batch(batch: Any, mesh: Mesh, axis: int = 0) -> Any:
    """Place a global batch that every process built identically, on one host or many.

    With one process this is :func:`shard_batch`. With several, every process holds the
    same global batch (built from the same key); each one keeps only its own contiguous
    slice along ``axis`` (process ``p`` of ``P`` takes rows ``p B/P`` to ``(p+1) B/P``) and
    :func:`global_batch_from_local` assembles the global array on its own devices.

    Args:
        batch: a pytree of host arrays, the whole global batch, batch on axis ``axis``.
        mesh: the device mesh.
        axis: the batch axis (``1`` for stacked ``(K, B, ...)`` batches).

    Returns:
        The pytree of ``jax.Array`` s sharded as ``batch_sharding(mesh, axis)``.

    Raises:
        ValueError: naming the leaf, if the batch does not split evenly.
    """
    nproc = jax.process_count()
    if nproc == 1:
        return shard_batch(batch, mesh, axis=axis)
    rank = jax.process_index()

    def mine(a: Any) -> np.ndarray:
        a = np.asarray(a)
        size = a.shape[axis] // nproc
        return np.take(a, np.arange(rank * size, (rank + 1) * size), axis=axis)

    return global_batch_from_local(jax.tree.map(mine, batch), mesh, axis)


def describe_devices(mesh: Mesh | None = None) -> list[str]:
    """Readable one-line descriptions of devices, e.g. ``"cpu:0 cpu (process 0)"``.

    Args:
        mesh: describe the devices of this mesh, in mesh order. Defaults to all devices
            (``jax.devices()``, every process).

    Returns:
        One string per device: ``"<platform>:<id> <device kind> (process <index>)"``.
    """
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()
    return [
        f"{d.platform}:{d.id} {getattr(d, 'device_kind', 'unknown')} "
        f"(process {getattr(d, 'process_index', 0)})"
        for d in devices
    ]


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def initialize_distributed(
    coordinator: str,
    num_processes: int,
    process_id: int,
    *,
    local_device_ids: int | Sequence[int] | None = None,
) -> None:
    """Join a multi-process JAX run (wraps :func:`jax.distributed.initialize`).

    Must be called once per process **before any other JAX call that initialises a
    backend** — any computation, ``jax.devices()``, ``jax.device_put``, building a mesh...
    JAX raises ``RuntimeError`` otherwise. Importing ``funcgrad`` is safe.

    Every process runs the same program with the same ``coordinator`` and
    ``num_processes`` and its own ``process_id``; process 0 hosts the coordinator service
    at ``coordinator``. The call blocks until all processes have connected. On CPU the
    cross-process collectives use gloo over TCP (JAX's default
    ``jax_cpu_collectives_implementation``).

    Args:
        coordinator: ``"HOST:PORT"`` of process 0, reachable from every process, e.g.
            ``"10.0.0.1:1234"`` (``"[::1]:1234"`` for IPv6).
        num_processes: the number of processes, at least 1.
        process_id: this process's index, ``0 <= process_id < num_processes``.
        local_device_ids: restrict this process to these local device ids (e.g. one GPU per
            process); ``None`` uses all local devices.

    Raises:
        ValueError: naming the offending argument, if an argument is malformed.
        RuntimeError: from JAX, if a backend is already initialised or this is called twice.
    """
    if not isinstance(coordinator, str):
        raise ValueError(f"initialize_distributed: argument 'coordinator' must be a "
                         f"'HOST:PORT' string; got {coordinator!r}")
    host, sep, port = coordinator.strip().rpartition(":")
    bare_host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not bare_host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"initialize_distributed: argument 'coordinator' must look like 'HOST:PORT' "
            f"with an integer port in 1..65535; got coordinator={coordinator!r}"
        )
    if not _is_int(num_processes) or num_processes < 1:
        raise ValueError(f"initialize_distributed: argument 'num_processes' must be an int "
                         f">= 1; got num_processes={num_processes!r}")
    if not _is_int(process_id) or not 0 <= process_id < num_processes:
        raise ValueError(
            f"initialize_distributed: argument 'process_id' must be an int with "
            f"0 <= process_id < num_processes={num_processes}; got process_id={process_id!r}"
        )
    kwargs: dict[str, Any] = {}
    if local_device_ids is not None:
        ids = [local_device_ids] if _is_int(local_device_ids) else local_device_ids
        try:
            ids = list(ids)
        except TypeError:
            ids = [None]
        if not ids or not all(_is_int(i) and i >= 0 for i in ids):
            raise ValueError(
                "initialize_distributed: argument 'local_device_ids' must be a non-negative "
                f"int or a non-empty sequence of them; got local_device_ids={local_device_ids!r}"
            )
        kwargs["local_device_ids"] = [int(i) for i in ids]
    jax.distributed.initialize(
        coordinator_address=coordinator.strip(),
        num_processes=int(num_processes),
        process_id=int(process_id),
        **kwargs,
    )

