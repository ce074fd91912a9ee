"""Where and how the pooling runs: the device, a bounded thread pool, inference mode.

Computation leaves the event loop for a pool of `max_concurrency` threads, so
the server keeps answering while tensors are pooled. Arrays go to the device
once and come back once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from app.dtypes import TABLE
from app.errors import ClientGone, Overloaded, TimedOut
from app.settings import Settings

T = TypeVar("T")

_HALF = (torch.float16, torch.bfloat16)
PINNED_FROM_BYTES = 1 << 22  # below 4 MiB, pinning costs more than it saves


_INFERENCE = threading.local()


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
        torch.set_num_threads(settings.torch_threads)
        self.workers = settings.max_concurrency
        self._pool: ThreadPoolExecutor | None = None  # made on first use, again after a close
        self._capacity = settings.max_concurrency + settings.max_queue
        self._timeout = settings.request_timeout_s
        self._retry_after = {"Retry-After": str(settings.retry_after_s)}
        self.taken = 0  # computations running or waiting; touched only on the event loop

    async def run(self, fn: Callable[..., T], *args: Any, gone: Callable[[], Awaitable[None]] | None = None) -> T:
        """`fn(*args)` in inference mode, in the bounded pool. If `gone()` finishes
        first (the client disconnected), the work is dropped if it has not started,
        and its result is never awaited if it has."""
        if self.taken >= self._capacity:
            raise Overloaded("every compute slot and queue place is taken; retry shortly", headers=self._retry_after)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pool")
        work = self._pool.submit(self._inference, fn, *args)
        future = asyncio.wrap_future(work)
        self.taken += 1
        # The slot frees when the thread is done with it, not when the client gives up.
        future.add_done_callback(self._release)
        waiters: set[asyncio.Future[Any]] = {future}
        watcher = asyncio.ensure_future(gone()) if gone is not None else None
        if watcher is not None:
            waiters.add(watcher)
        try:
            done, _ = await asyncio.wait(waiters, timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watcher is not None:
                watcher.cancel()
        if future in done:
            return future.result()
        work.cancel()  # at once, not on a later loop turn: if it has not started, it never will
        if watcher is not None and watcher in done:
            raise ClientGone
        raise TimedOut(f"the computation took longer than {self._timeout} s")

    def _release(self, _: asyncio.Future[Any]) -> None:
        self.taken -= 1

    def inline(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in inference mode, here: for work of microseconds."""
        return self._inference(fn, *args)

    @staticmethod
    def _inference(fn: Callable[..., T], *args: Any) -> T:
        if not torch.is_inference_mode_enabled():
            # On once per thread and left on: the threads that pool (the event loop's
            # and the pool's) never need autograd, and entering and leaving the mode
            # around every call costs as much as pooling a small tensor.
            _INFERENCE.mode = torch.inference_mode()
            _INFERENCE.mode.__enter__()
        return fn(*args)

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
