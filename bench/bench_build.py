"""Benchmark ``prep build`` on 10k, 100k and 200k synthetic conversations (near-dedup on).

Each size runs as its own ``prep build`` process, timed from outside, with the
child's peak RSS from getrusage. Usage: python bench/bench_build.py [SIZES...]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import write  # noqa: E402


def run(size: int, work: Path) -> dict:
    data = write(work / f"synth_{size}.jsonl", size)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prep.cli", "build", str(data), "--name", f"b{size}", "--dataset-dir", str(work)],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads((work / "data" / f"b{size}_report.json").read_text(encoding="utf-8"))
    return {"size": size, "seconds": round(seconds, 2), "peak_rss_mb": round(max(peak, before) / 1024),
            "kept": report["kept"], "duplicates": report["duplicates"], "rejected": report["rejected"]}


def main() -> None:
    sizes = [int(s) for s in sys.argv[1:]] or [10_000, 100_000, 200_000]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(size, Path(tmp)) for size in sizes]
    for row in results:
        print(json.dumps(row))
    by_size = {r["size"]: r["seconds"] for r in results}
    if 100_000 in by_size and 200_000 in by_size:
        print(f"200k / 100k time ratio: {by_size[200_000] / by_size[100_000]:.2f}")


if __name__ == "__main__":
    main()
