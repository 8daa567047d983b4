"""Chunked work in worker processes for large inputs, in order: the one pool pattern of ``prep build``.

The per-record cleaning steps and the MinHash signatures are pure functions of
their chunk, so a large input is cut into chunks and mapped over forked worker
processes; a small one runs in this process, where a pool would cost more than
it saves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

Result = TypeVar("Result")

MIN_PARALLEL = 20_000  # fewer items than this run in this process


def map_chunks(func: Callable[..., Result], items: Sequence, *args: Any, workers: int | None = None,
               min_parallel: int = MIN_PARALLEL, chunks_per_worker: int = 1) -> list[Result]:
    """``func(chunk, *args)`` for consecutive chunks of ``items``, results in chunk order (one chunk when small)."""
    workers = workers or min(4, os.cpu_count() or 1)
    if workers == 1 or len(items) < min_parallel:
        return [func(items, *args)]
    size = -(-len(items) // (workers * chunks_per_worker))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(func, chunks, *([arg] * len(chunks) for arg in args)))
