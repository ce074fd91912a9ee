"""Where and how the pooling runs: the device, a bounded thread pool, inference mode,
and stopping a computation that nobody waits for any more.

Computation leaves the event loop for a pool of `max_concurrency` threads, so
the server keeps answering while tensors are pooled. Arrays go to the device
once and come back once. A thread cannot be killed, so a long computation runs
in pieces and calls `checkpoint()` between them: when its request timed out or
its client left, the next checkpoint ends it and its slot is free again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from app.dtypes import TABLE
from app.errors import ClientGone, Overloaded, ProblemError, TimedOut
from app.settings import Settings

T = TypeVar("T")
log = logging.getLogger("app.execution")

_HALF = (torch.float16, torch.bfloat16)
PINNED_FROM_BYTES = 1 << 22  # below 4 MiB, pinning costs more than it saves


class _Pooling(threading.local):
    """How this thread is set up to pool (`_inference`): 0 threads until it is."""

    threads = 0


_POOLING = _Pooling()


class _Running(threading.local):
    """What ends the computation this thread runs: `stop`, set when nobody waits for it
    any more, and its request's `deadline`; None where there is none (the event loop's
    inline work)."""

    stop: threading.Event | None = None
    deadline: float | None = None


_RUNNING = _Running()


class Stopped(Exception):
    """A computation ended at a checkpoint: its request timed out or its client left."""


def checkpoint() -> None:
    """Between two pieces of a computation: end it here if nobody waits for it any more, or
    if its request's own deadline (`set_deadline`) has passed."""
    stop = _RUNNING.stop
    if stop is not None and stop.is_set():
        raise Stopped
    deadline = _RUNNING.deadline
    if deadline is not None and time.monotonic() > deadline:
        raise TimedOut("the computation ran past the request's timeout")


def set_deadline(deadline: float | None) -> None:
    """A deadline (time.monotonic()) for the computation this thread runs, known only once its
    body is decoded here (the protocol's `timeout` parameter)."""
    _RUNNING.deadline = deadline


class DeviceUnavailable(RuntimeError):
    """The configured device is not present; the service refuses to start."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise DeviceUnavailable(f"POOL_DEVICE={name} but no such CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"POOL_DEVICE={name} but MPS is not available")
    return device


class Executor:
    """The device and a compute pool of `max_concurrency` threads with at most
    `max_queue` computations waiting; past that, work is refused at once (503)."""

    def __init__(self, settings: Settings) -> None:
        self.device = resolve_device(settings.device)
        self.on_cpu = self.device.type == "cpu"
        self.device_name = str(self.device)
        # The count for threads that never pool; those that do set their own (`_inference`).
        torch.set_num_threads(settings.torch_threads)
        self._threads = settings.torch_threads
        self.workers = settings.max_concurrency
        self._pool: ThreadPoolExecutor | None = None  # made on first use, again after a close
        self._capacity = settings.max_concurrency + settings.max_queue
        self._timeout = settings.request_timeout_s
        self._retry_after = {"Retry-After": str(settings.retry_after_s)}
        self.taken = 0  # computations running or waiting; touched only on the event loop

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        gone: Callable[[], Awaitable[None]] | None = None,
        timeout: float | None = None,
    ) -> T:
        """`fn(*args)` in inference mode, in the bounded pool. If the request's time (the
        service's limit, or `timeout` seconds where shorter) runs out or `gone()` finishes
        first (the client disconnected), the work is dropped if it has not started, and
        stopped at its next checkpoint if it has."""
        limit = min((t for t in (self._timeout, timeout) if t is not None), default=None)
        if self.taken >= self._capacity:
            raise Overloaded("every compute slot and queue place is taken; retry shortly", headers=self._retry_after)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pool")
        stop = threading.Event()
        work = self._pool.submit(self._stoppable, stop, fn, *args)
        future = asyncio.wrap_future(work)
        self.taken += 1
        # The slot frees when the thread is done with it, not when the client gives up.
        future.add_done_callback(self._release)
        waiters: set[asyncio.Future[Any]] = {future}
        watcher = asyncio.ensure_future(gone()) if gone is not None else None
        if watcher is not None:
            waiters.add(watcher)
        try:
            done, _ = await asyncio.wait(waiters, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is stopping: nobody will wait for it
            _abandon(work, stop, future)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if future in done:
            return future.result()
        _abandon(work, stop, future)
        if watcher is not None and watcher in done:
            raise ClientGone
        if limit == timeout:
            raise TimedOut("the computation ran past the request's timeout")
        raise TimedOut(f"the computation took longer than {limit:g} s")

    def _release(self, _: asyncio.Future[Any]) -> None:
        self.taken -= 1

    def _stoppable(self, stop: threading.Event, fn: Callable[..., T], *args: Any) -> T:
        _RUNNING.stop = stop
        try:
            return _inference(self._threads, fn, *args)
        finally:
            _RUNNING.stop = _RUNNING.deadline = None

    def inline(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in inference mode, here: for work of microseconds, which torch
        runs on this thread alone (waking its other threads would cost more)."""
        return _inference(1, fn, *args)

    def to_device(self, array: np.ndarray, dtype: str) -> torch.Tensor:
        """The array on the device, copied once; large ones through pinned host memory,
        which the GPU reads at full speed (the answer's copy back synchronises)."""
        tensor = torch.from_numpy(array)
        target = TABLE[dtype].torch
        if self.on_cpu:
            return tensor if tensor.dtype is target else tensor.to(dtype=target)  # no copy when it fits
        if self.device.type == "cuda" and array.nbytes >= PINNED_FROM_BYTES:
            tensor = tensor.pin_memory()
            return tensor.to(device=self.device, dtype=target, non_blocking=True)
        return tensor.to(device=self.device, dtype=target)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _inference(threads: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` with this thread set up to pool, once: inference mode, on and left on
    (the threads that pool never need autograd, and entering and leaving the mode around
    every call costs as much as pooling a small tensor), and torch's intra-op threads for
    the work this thread runs, which torch keeps per thread."""
    if _POOLING.threads != threads:
        if not _POOLING.threads:
            _POOLING.mode = torch.inference_mode()
            _POOLING.mode.__enter__()
            # Torch sets a thread's count up on its first parallel call, from the count any
            # thread set last: have that happen now, so that it cannot undo the one below.
            torch.get_num_threads()
        torch.set_num_threads(threads)
        _POOLING.threads = threads
    return fn(*args)


def _abandon(work: Future[Any], stop: threading.Event, future: asyncio.Future[Any]) -> None:
    """Nobody waits for this computation any more: drop it if it has not started (at
    once, not on a later loop turn), and stop it at its next checkpoint if it has."""
    work.cancel()
    stop.set()
    future.add_done_callback(_abandoned)


def _abandoned(future: asyncio.Future[Any]) -> None:
    """How a computation nobody waits for ended: stopped, or refused as a client error, is
    expected; anything else is a bug that no answer will report, so it is logged here."""
    if future.cancelled():
        return
    error = future.exception()
    if error is not None and not isinstance(error, (Stopped, ProblemError)):
        log.error("a computation whose request had gone failed", exc_info=error)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A result back on the host; bfloat16, which numpy lacks, as float32 (exact)."""
    if tensor.dtype is torch.bfloat16:
        tensor = tensor.to(torch.float32)
    return tensor.numpy() if tensor.is_cpu else tensor.cpu().numpy()


def with_fallbacks(compute: Callable[..., Any], x: torch.Tensor, params: Any, plan: Any, extra: dict[str, Any]) -> Any:
    """Run `compute`, and where torch has no kernel for the dtype on this device:

    - float16/bfloat16 (avg_pool3d on the CPU): in float32, rounded back;
    - integers on a GPU (torch's CUDA max pooling takes floats only): on the CPU,
      exactly, the result staying there for the answer."""
    try:
        return compute(x, params, plan, extra)
    except (RuntimeError, NotImplementedError) as exc:
        if "not implemented for" not in str(exc):
            raise
    if x.dtype in _HALF:
        out, indices = compute(x.float(), params, plan, extra)
        return out.to(x.dtype), indices
    if x.device.type != "cpu" and not x.is_floating_point():
        return compute(x.cpu(), params, plan, {name: value.cpu() for name, value in extra.items()})
    raise NotImplementedError(f"no kernel for {x.dtype} on {x.device}")


PIECE_WORK = 1 << 25  # cells a piece visits: small beside the work cap, large beside a piece's overhead

Piece = tuple[slice, ...]


def pieces(batch: int, channels: int, work: int) -> list[Piece] | None:
    """How to split a computation of `work` cells over `batch` x `channels` planes into
    pieces of about `PIECE_WORK`: whole batch entries where a piece holds several,
    runs of channels within one entry where it does not; None when one piece does.
    A plane is never split, so the longest piece is one plane's work, which the
    work cap bounds."""
    planes = batch * channels
    if work <= PIECE_WORK or planes <= 1:
        return None
    per_piece = max(1, PIECE_WORK // -(-work // planes))  # planes in a piece
    if per_piece >= planes:
        return None
    if per_piece >= channels:
        step = per_piece // channels
        return [(slice(n, n + step),) for n in range(0, batch, step)]
    return [(slice(n, n + 1), slice(c, c + per_piece)) for n in range(batch) for c in range(0, channels, per_piece)]


def in_pieces(compute: Callable[..., Any], x: torch.Tensor, params: Any, plan: Any, extra: dict[str, Any]) -> Any:
    """`with_fallbacks(compute, ...)` over the planes of `x`, piece by piece, with a
    checkpoint before each: the planes are independent, so the pieces' results,
    put side by side, are the whole's."""
    split = pieces(x.shape[0], x.shape[1], plan.work)
    if split is None:
        return with_fallbacks(compute, x, params, plan, extra)
    outs: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    for piece in split:
        checkpoint()
        out, where = with_fallbacks(compute, x[piece], params, plan, {name: t[piece] for name, t in extra.items()})
        if outs is None:
            outs = out.new_empty((*x.shape[:2], *out.shape[2:]))
            indices = where.new_empty((*x.shape[:2], *where.shape[2:])) if where is not None else None
        outs[piece] = out
        if indices is not None:
            indices[piece] = where
        _settle(out)
    assert outs is not None
    return outs, indices


def _settle(tensor: torch.Tensor) -> None:
    """Wait for the device to finish a piece: a GPU runs work queued ahead, and a
    checkpoint that only queued pieces would stop nothing."""
    if tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)
    elif tensor.device.type == "mps":
        torch.mps.synchronize()
