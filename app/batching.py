"""Small requests that arrive together, pooled together: one torch call for a batch.

A tiny tensor is pooled on the event loop (`app.pipeline`), where torch's own
overhead per call costs more than the pooling. Requests with the same plan (the
same op, parameters, shape and dtype: the plan cache hands them one `Plan`) that
reach the pooling in the same turn of the event loop are joined along their
batch dimension and pooled by one call, and each gets its own slice of the
result, encoded as it asked. Nothing waits for a batch to fill: the batch runs
once the requests already in hand have had their turn, so a lone request is
pooled as soon as it would have been, and a busy server pools several at once.

Only families whose every plane comes out bit for bit the same wherever it lies
in the tensor take part (`Family.batchable`), and only C-ordered inputs (torch
reads another order by another path, which may sum in another order); indices
asked for in the global layout, which count across the batch, and inputs without
a batch dimension run alone, as do requests whose parameters are not cached
(`POOL_PLAN_CACHE_SIZE`). Triton's statistics count a batch as one execution
(`app.statistics`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TypeVar

import numpy as np

from app.execution import Executor
from app.pipeline import Job, compute, encoded, finish

log = logging.getLogger("app.batching")
R = TypeVar("R")


class Batcher:
    def __init__(self, executor: Executor, max_batch: int) -> None:
        self._executor = executor
        self._max_batch = max_batch
        self._open: dict[int, list[tuple[Job[Any], asyncio.Future[Any]]]] = {}  # by id(plan)

    def takes(self, job: Job[Any]) -> bool:
        """Whether `job` may share a torch call with others of its plan."""
        return (
            self._max_batch > 1
            and job.operation.family.batchable
            and job.layout.batched
            and job.tensors["input"].array.flags.c_contiguous
            and not job.params.global_indices()
        )

    def submit(self, job: Job[R]) -> asyncio.Future[R]:
        """The job's answer, once it has been pooled with the others of its plan that
        arrived in the same turn of the event loop (at most `max_batch` in one call)."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        key = id(job.plan)  # the jobs waiting keep their plan alive, so no other plan has its id
        batch = self._open.get(key)
        if batch is None or len(batch) >= self._max_batch:
            batch = self._open[key] = []
            loop.call_soon(self._run, key, batch)  # after the requests ready now have had their turn
        batch.append((job, answer))
        return answer

    def _run(self, key: int, batch: list[tuple[Job[Any], asyncio.Future[Any]]]) -> None:
        if self._open.get(key) is batch:
            del self._open[key]
        waiting = [(job, answer) for job, answer in batch if not answer.done()]  # not cancelled
        try:
            self._answer(waiting)
        finally:  # whatever escaped, no request is left waiting for an answer that will not come
            for _, answer in waiting:
                _resolve(answer, RuntimeError("the batch this request was pooled in ended without its answer"))

    def _answer(self, waiting: list[tuple[Job[Any], asyncio.Future[Any]]]) -> None:
        if len(waiting) > 1:
            try:
                answers = self._executor.inline(_together, [job for job, _ in waiting])
            except Exception:  # torch refused the batch: each runs alone below, to be answered for itself
                log.debug("a batch of %d failed; its requests run alone", len(waiting), exc_info=True)
            else:
                for (_, answer), result in zip(waiting, answers, strict=True):
                    _resolve(answer, result)
                return
        for job, answer in waiting:
            try:
                _resolve(answer, self._executor.inline(finish, job))
            except Exception as exc:
                _resolve(answer, exc)


def _resolve(answer: asyncio.Future[Any], result: Any) -> None:
    """The answer, or the exception, for a request still waiting."""
    if answer.done():
        return
    if not isinstance(result, BaseException):
        answer.set_result(result)
        return
    try:
        answer.set_exception(result)
    except TypeError:  # StopIteration, which a future cannot carry
        answer.set_exception(RuntimeError(f"the computation raised {type(result).__name__}"))


def _together(jobs: list[Job[Any]]) -> list[Any]:
    """Jobs of one plan pooled as one batch: each one's answer (or the exception its
    encoding raised), in order."""
    first = jobs[0]
    computing = time.perf_counter_ns()
    arrays = [job.tensors["input"].array for job in jobs]
    out, indices = compute(first, np.concatenate(arrays))
    computed = time.perf_counter_ns()
    if first.timings is not None:
        first.timings.execution = len(jobs)
    answers: list[Any] = []
    start = 0
    for job, array in zip(jobs, arrays, strict=True):
        own = slice(start, start + len(array))
        start = own.stop
        try:
            answers.append(encoded(job, out[own], indices[own] if indices is not None else None, computing, computed))
        except Exception as exc:
            answers.append(exc)
    return answers
