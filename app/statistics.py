"""Per-model inference statistics, as Triton's statistics extension reports them
(`GET /v2/models/{op}/stats`): counts and cumulative nanoseconds of successful and failed
inferences, and of their phases: waiting for a compute slot (`queue`), decoding and
planning (`compute_input`), pooling (`compute_infer`) and encoding (`compute_output`).

Every request for an op whose body arrived counts, through either door (`/pool/{op}` or the
protocol's infer), from the moment its body is in: a refusal before that (a limit, the pace,
an encoding) never reached the model, and a dry run is no inference. Phases are measured where they
happen, on the event loop or in a pool thread, into the request's `Timings`; `record` adds
them under a lock. Requests pooled together in one torch call (`app.batching`) are one
execution: `execution_count` and `batch_stats` count those, and each request's
`compute_infer` is that call's time, as Triton counts a batch's.
"""

from __future__ import annotations

import threading
import time
from typing import Any

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


class Timings:
    """One request's phases, in nanoseconds, as they are measured."""

    __slots__ = (
        "compute_infer",
        "compute_input",
        "compute_output",
        "computed",
        "details",
        "dry_run",
        "execution",
        "marks",
        "queue",
        "queued_at",
        "waited",
    )

    def __init__(self, traced: bool = False) -> None:
        self.queue = self.compute_input = self.compute_infer = self.compute_output = 0
        self.queued_at: int | None = None  # perf_counter_ns() when it was handed to the pool
        self.waited = False  # it ran in the pool, after `queue` ns in its queue
        # For a traced request: each phase as (name, start, end) in perf_counter_ns, and what
        # was computed on what (`app.tracing` makes them spans and attributes).
        self.marks: list[tuple[str, int, int]] | None = [] if traced else None
        self.details: dict[str, Any] | None = None
        self.computed = False  # a computation ran to its end
        # The size of the batch whose one execution this request counts (1: it ran alone);
        # 0 for the others of a batch, whose execution the first counts (`app.batching`).
        self.execution = 0
        self.dry_run = False  # a dry run, even a refused one, is no inference

    def started(self) -> None:
        """In the pool thread, as the work begins: the time it waited (counted once)."""
        if self.queued_at is not None:
            now = time.perf_counter_ns()
            self.queue = now - self.queued_at
            if self.marks is not None:
                self.marks.append(("wait for a compute slot", self.queued_at, now))
            self.queued_at = None
            self.waited = True

    def mark(self, phase: str, started: int) -> None:
        """For a traced request: `phase`, begun at `started` (perf_counter_ns), ends now."""
        if self.marks is not None:
            self.marks.append((phase, started, time.perf_counter_ns()))


class _Model:
    __slots__ = ("batches", "executions", "fail", "inferences", "last_ms", "success", "times")

    def __init__(self) -> None:
        self.inferences = 0  # each counts every phase once
        self.last_ms = 0
        self.success = [0, 0]  # count, ns
        self.fail = [0, 0]
        self.times = [0] * len(PHASES)  # ns, in PHASES' order
        self.executions = 0  # computations: a batch of requests is one
        self.batches: dict[int, list[int]] = {}  # batch size: [executions, ns computing]


class InferenceStatistics:
    def __init__(self, operations: list[str]) -> None:
        self._lock = threading.Lock()
        self._models = {name: _Model() for name in operations}

    def record(self, op: str, ok: bool, elapsed_ns: int, timings: Timings) -> None:
        model = self._models.get(op)
        if model is None or timings.dry_run or (ok and not timings.computed):
            return
        with self._lock:
            totals = model.success if ok else model.fail
            totals[0] += 1
            totals[1] += elapsed_ns
            if timings.execution:  # ran, whether this request's own answer then failed or not
                model.executions += 1
                batch = model.batches.setdefault(timings.execution, [0, 0])
                batch[0] += 1
                batch[1] += timings.compute_infer
            if ok:
                model.inferences += 1
                model.last_ms = time.time_ns() // 1_000_000
                times = model.times
                times[0] += timings.queue
                times[1] += timings.compute_input
                times[2] += timings.compute_infer
                times[3] += timings.compute_output

    def report(self, op: str, version: str) -> dict[str, Any]:
        """One model's entry of `model_stats`, in Triton's form."""
        model = self._models[op]
        with self._lock:
            stats = {
                phase: {"count": model.inferences, "ns": ns} for phase, ns in zip(PHASES, model.times, strict=True)
            }
            return {
                "name": op,
                "version": version,
                "last_inference": model.last_ms,
                "inference_count": model.inferences,
                "execution_count": model.executions,
                "inference_stats": {
                    "success": {"count": model.success[0], "ns": model.success[1]},
                    "fail": {"count": model.fail[0], "ns": model.fail[1]},
                    **stats,
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                # Per batch size, its executions and the time they took to pool (what a
                # batch's assembly and answers take is counted in each request's phases).
                "batch_stats": [
                    {"batch_size": size, "compute_infer": {"count": count, "ns": ns}}
                    for size, (count, ns) in sorted(model.batches.items())
                ],
                "memory_usage": [],
            }
