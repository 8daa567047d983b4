"""One distillation run spread over several client processes.

A single Python event loop spends a few milliseconds of CPU on each request
(the openai client's request building, aiohttp, parsing the answer, the
journal line), so it tops out near 250 requests/s however many requests are in
flight (bench/README.md). With many requests in flight, ``prep distill`` splits
the pending plan into one shard per process. Every process runs the same
``Distiller`` on its shard with its share of the concurrency and appends to the
same journal (one ``write`` per line on an ``O_APPEND`` descriptor, so lines
never interleave). What must be common to the run lives in shared memory
(``SharedRun``): the pause after a 429, the stop after a fatal error or
``--max-cost``, and the counts behind the progress bar and the cost cap.

Children die with the parent (``PR_SET_PDEATHSIG``): after a ``kill -9`` of
``prep distill`` nothing goes on sending or writing, so a re-run resumes
exactly as it does for one process.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import queue
import signal
import time
from dataclasses import replace

from tqdm import tqdm

from prep.distill import DistillConfig, Distiller, JournalWriter, RunStats, pending_specs, show_progress
from prep.errors import PrepError

PR_SET_PDEATHSIG = 1
POLL_S = 0.2


class SharedRun:
    """Counters and signals every process of one run sees (multiprocessing shared memory)."""

    def __init__(self, context):
        self._counts = context.Array("q", len(RunStats.COUNTED))
        self._pause_until = context.Value("d", 0.0)
        self._stop = context.Event()

    def add(self, entry: dict) -> None:
        one = RunStats()
        one.add(entry)
        with self._counts.get_lock():
            for slot, name in enumerate(RunStats.COUNTED):
                self._counts[slot] += getattr(one, name)

    def count_retry(self) -> None:
        with self._counts.get_lock():
            self._counts[RunStats.COUNTED.index("retries")] += 1

    def snapshot(self) -> RunStats:
        with self._counts.get_lock():
            values = list(self._counts)
        return RunStats(**dict(zip(RunStats.COUNTED, values)))

    def pause(self, until: float) -> None:
        with self._pause_until.get_lock():
            self._pause_until.value = max(self._pause_until.value, until)

    def paused_until(self) -> float:
        return self._pause_until.value

    def stop(self) -> None:
        self._stop.set()

    def stopped(self) -> bool:
        return self._stop.is_set()


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its parent dies; exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's cleanup still terminates its children
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _run_shard(config: DistillConfig, shard: list[int], shared: SharedRun, results, parent_pid: int) -> None:
    """A child process: send one shard of the plan and report its counts."""
    _die_with_parent(parent_pid)
    try:
        results.put(("done", asyncio.run(Distiller(config, shard=shard, shared=shared).run())))
    except KeyboardInterrupt:
        results.put(("interrupted", None))
    except BaseException as err:  # reported by the parent as one sentence
        results.put(("error", f"{type(err).__name__}: {err}"))


def split_concurrency(concurrency: int, processes: int) -> list[int]:
    """``concurrency`` requests in flight spread as evenly as possible over ``processes``."""
    return [concurrency // processes + (k < concurrency % processes) for k in range(processes)]


def run_in_processes(config: DistillConfig, processes: int) -> RunStats:
    """Run (or resume) a distillation with ``processes`` client processes and return the merged statistics."""
    pending, skipped = pending_specs(config)
    JournalWriter.repair_torn_tail(config.out)  # once, before any child appends
    context = multiprocessing.get_context("spawn")  # no fork: the caller may hold threads (a server, a test harness)
    shared, results = SharedRun(context), context.Queue()
    children = [
        context.Process(target=_run_shard, name=f"distill-{k}", daemon=True,
                        args=(replace(config, concurrency=share, progress=False, processes=1),
                              [spec.index for spec in pending[k::processes]], shared, results, os.getpid()))
        for k, share in enumerate(split_concurrency(config.concurrency, processes))
    ]
    stats = RunStats(skipped=skipped)
    bar = tqdm(total=len(pending), desc="distill", unit="req", disable=None if config.progress is None else not config.progress)
    start = time.perf_counter()
    try:
        for child in children:
            child.start()
        _collect(children, results, shared, stats, bar)
    finally:
        shared.stop()
        for child in children:
            if child.pid is not None:
                child.join(timeout=30)
            if child.is_alive():
                child.kill()
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _collect(children, results, shared: SharedRun, stats: RunStats, bar) -> None:
    """Wait for every child's counts, moving the progress bar meanwhile."""
    reports = 0
    while reports < len(children):
        try:
            kind, payload = results.get(timeout=POLL_S)
        except queue.Empty:
            show_progress(bar, shared.snapshot())
            if not any(child.is_alive() for child in children) and results.empty():
                raise PrepError("a distill client process ended without reporting; the journal keeps what it wrote, re-run to resume.")
            continue
        reports += 1
        if kind == "error":
            raise PrepError(f"a distill client process failed ({payload}); the journal keeps what it wrote, re-run to resume.")
        if kind == "interrupted":
            raise KeyboardInterrupt
        stats.merge(payload)
    show_progress(bar, stats)
