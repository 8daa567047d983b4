"""One distillation run spread over several client processes.

A single Python event loop spends a couple of milliseconds of CPU on each
request (the openai client's request building, aiohttp, parsing the answer, the
journal line), so it tops out at a few hundred requests/s however many requests
are in flight (bench/README.md). With many requests in flight, ``prep distill``
splits the pending plan into one shard per process. Every process runs the same
``Distiller`` on its shard with its share of the concurrency and appends to the
same journal (one ``write`` per line on an ``O_APPEND`` descriptor, so lines
never interleave). What must be common to the run lives in shared memory
(``SharedRun``): the pause after a 429, the stop after a fatal error or
``--max-cost``, and the counts behind the progress bar and the cost cap. Each
process writes only its own slots, so no lock is shared: a process killed at any
moment cannot leave the others waiting on it. All start sending together, once
every one has loaded.

Children die with the parent (``PR_SET_PDEATHSIG`` on Linux, and a thread
watching the parent everywhere): after a ``kill -9`` of ``prep distill`` nothing
goes on sending or writing, so a re-run resumes exactly as it does for one
process.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from dataclasses import replace

from tqdm import tqdm

from prep.distill import DistillConfig, Distiller, JournalWriter, RunStats, pending_specs, show_progress
from prep.errors import PrepError

PR_SET_PDEATHSIG = 1
POLL_S = 0.2
START_TIMEOUT_S = 120.0
JOIN_TIMEOUT_S = 30.0


class SharedRun:
    """Counters and signals every process of one run sees: one row of counts and one pause deadline per
    process (written by that process only, read by all), a start flag and a stop flag. No locks."""

    def __init__(self, context, processes: int):
        self.processes = processes
        self._counts = context.Array("q", processes * len(RunStats.COUNTED), lock=False)
        self._pause_until = context.Array("d", processes, lock=False)
        self._ready = context.Array("b", processes, lock=False)
        self._flags = context.Array("b", 2, lock=False)  # [go, stop]

    def slot(self, index: int) -> "ProcessSlot":
        return ProcessSlot(self, index)

    def snapshot(self) -> RunStats:
        width = len(RunStats.COUNTED)
        values = list(self._counts)
        return RunStats(**{name: sum(values[k * width + field] for k in range(self.processes))
                           for field, name in enumerate(RunStats.COUNTED)})

    def all_ready(self) -> bool:
        return all(self._ready)

    def go(self) -> None:
        self._flags[0] = 1

    def stop(self) -> None:
        self._flags[1] = 1

    def stopped(self) -> bool:
        return bool(self._flags[1])


class ProcessSlot:
    """One process's view of the shared run: what ``Distiller`` calls when it runs a shard."""

    def __init__(self, run: SharedRun, index: int):
        self.run, self.index = run, index
        self._row = index * len(RunStats.COUNTED)

    def add(self, entry: dict) -> None:
        one = RunStats()
        one.add(entry)
        for field, name in enumerate(RunStats.COUNTED):
            self.run._counts[self._row + field] += getattr(one, name)

    def count_retry(self) -> None:
        self.run._counts[self._row + RunStats.COUNTED.index("retries")] += 1

    def snapshot(self) -> RunStats:
        return self.run.snapshot()

    def pause(self, until: float) -> None:
        self.run._pause_until[self.index] = max(self.run._pause_until[self.index], until)

    def paused_until(self) -> float:
        return max(self.run._pause_until)

    def stop(self) -> None:
        self.run.stop()

    def stopped(self) -> bool:
        return self.run.stopped()

    async def start_together(self) -> None:
        """Say this process is ready, then wait until the parent lets every process start."""
        self.run._ready[self.index] = 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.run._flags[0] and not self.stopped() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


def _die_with_parent() -> None:
    """End this process when its parent dies: at once on Linux (PR_SET_PDEATHSIG), and everywhere from a
    thread that watches the parent."""
    parent = multiprocessing.parent_process()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if parent is None:
        return
    if not parent.is_alive():
        os._exit(1)

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _run_shard(config: DistillConfig, shard: list[int], slot: ProcessSlot, report) -> None:
    """A child process: send one shard of the plan and report its counts through its own pipe."""
    _die_with_parent()
    try:
        report.send(("done", asyncio.run(Distiller(config, shard=shard, shared=slot).run())))
    except KeyboardInterrupt:
        report.send(("interrupted", None))
    except BaseException as err:  # reported by the parent as one sentence
        report.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        report.close()


def split_concurrency(concurrency: int, processes: int) -> list[int]:
    """``concurrency`` requests in flight spread as evenly as possible over ``processes``."""
    return [concurrency // processes + (k < concurrency % processes) for k in range(processes)]


def run_in_processes(config: DistillConfig, processes: int) -> RunStats:
    """Run (or resume) a distillation with ``processes`` client processes and return the merged statistics."""
    pending, skipped = pending_specs(config)
    processes = min(processes, len(pending))
    if processes <= 1:
        return asyncio.run(Distiller(config).run())
    JournalWriter.repair_torn_tail(config.out)  # once, before any child appends
    context = multiprocessing.get_context("spawn")  # no fork: the caller may hold threads (a server, a test harness)
    shared = SharedRun(context, processes)
    pipes = [context.Pipe(duplex=False) for _ in range(processes)]
    children = [
        context.Process(target=_run_shard, name=f"distill-{k}", daemon=True,
                        args=(replace(config, concurrency=share, progress=False, processes=1),
                              [spec.index for spec in pending[k::processes]], shared.slot(k), pipes[k][1]))
        for k, share in enumerate(split_concurrency(config.concurrency, processes))
    ]
    stats = RunStats(skipped=skipped)
    bar = tqdm(total=len(pending), desc="distill", unit="req", disable=None if config.progress is None else not config.progress)
    start = time.perf_counter()
    try:
        for child, (_, sender) in zip(children, pipes):
            child.start()
            sender.close()  # the child holds the sending end now
        _collect([receiver for receiver, _ in pipes], shared, stats, bar)
    finally:
        shared.stop()
        _end(children)
        for receiver, _ in pipes:
            receiver.close()
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _collect(receivers, shared: SharedRun, stats: RunStats, bar) -> None:
    """Start every child together once all have loaded, then wait for each one's counts, moving the bar."""
    waiting = set(receivers)  # a child that dies without reporting shows as an end of file on its pipe
    while waiting:
        if shared.all_ready():
            shared.go()
        for receiver in multiprocessing.connection.wait(list(waiting), timeout=POLL_S):
            try:
                kind, payload = receiver.recv()
            except EOFError:
                kind, payload = "error", "it ended without reporting"
            waiting.discard(receiver)
            if kind == "error":
                raise PrepError(f"a distill client process failed ({payload}); the journal keeps what it wrote, re-run to resume.")
            if kind == "interrupted":
                raise KeyboardInterrupt
            stats.merge(payload)
        show_progress(bar, shared.snapshot())
    show_progress(bar, stats)


def _end(children) -> None:
    """Give the children up to JOIN_TIMEOUT_S in all to finish (they see the stop flag), then kill the rest."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for child in children:
        if child.pid is not None:
            child.join(timeout=max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()
        if child.pid is not None:
            child.close()
