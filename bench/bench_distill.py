"""Distillation throughput against a local OpenAI-compatible server with fixed latency.

For C = 1, 8, 32, 64, 128 requests in flight, achieved requests/s versus the
ideal C / latency, and the client's CPU time per request (its worker processes
included). The server (tests/fake_openai.py) runs in its own process so that
its CPU is not counted. Two rates: over the whole run (start-up and tail
included) and steady, between 10% and 90% of the journal written (a sampler
thread watches the journal's size), which is what a run of hours sees.

    python bench/bench_distill.py [--latency 0.2] [--rounds 40] [--processes 1,2,4]

``--processes`` also runs C = 64 and 128 with each of those client process
counts (the default is prep distill's own choice, one process per 64 in flight).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from fake_openai import Behaviour, FakeOpenAI
server = FakeOpenAI(Behaviour(latency_s=float(sys.argv[2]), pairs_per_answer=20))
print(server.start(), flush=True)
while True:
    time.sleep(3600)
"""


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process plus its finished children (prep distill's client processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class JournalSampler(threading.Thread):
    """Samples the journal's size every 20 ms (os.stat only: next to no CPU taken from the client)."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.samples, self.done = path, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.samples.append((time.perf_counter(), self.path.stat().st_size))
            except FileNotFoundError:
                pass

    def steady_rate(self, requests: int) -> float:
        """Requests/s between 10% and 90% of the final journal size."""
        self.done.set()
        self.join()
        final = self.path.stat().st_size
        low = next(t for t, size in self.samples if size >= 0.1 * final)
        high = next(t for t, size in self.samples if size >= 0.9 * final)
        return 0.8 * requests / (high - low) if high > low else float("nan")


def measure(url: str, concurrency: int, processes: int | None, requests: int, server_pid: int):
    from prep.distill import DistillConfig, distill

    with tempfile.TemporaryDirectory() as tmp:
        config = DistillConfig(out=Path(tmp) / "j.jsonl", base_url=url, model="bench", requests=requests,
                               concurrency=concurrency, progress=False, timeout_s=30, processes=processes)
        sampler = JournalSampler(config.out)
        cpu, wall, server_cpu = own_cpu_s(), time.perf_counter(), process_cpu_s(server_pid)
        sampler.start()
        stats = distill(config)
        wall, cpu = time.perf_counter() - wall, own_cpu_s() - cpu
        server_cpu = process_cpu_s(server_pid) - server_cpu
        steady = sampler.steady_rate(requests)
    assert stats.ok == requests, stats
    return wall, steady, cpu, server_cpu


def main() -> None:
    import openai  # noqa: F401  (imported before timing: 1-2 s the first time)

    from prep.distill import default_processes

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=40, help="requests per run = rounds x C (at least 40)")
    parser.add_argument("--processes", default="", help="comma-separated client process counts to compare at C = 64 and 128")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(ROOT / "tests"), str(args.latency)], stdout=subprocess.PIPE, text=True)
    runs = [(c, None) for c in (1, 8, 32, 64, 128)]
    runs += [(c, int(p)) for c in (64, 128) for p in args.processes.split(",") if p]
    try:
        url = server.stdout.readline().strip()
        print(f"latency {args.latency} s per request, 20 pairs per answer, {os.cpu_count()} CPUs")
        print("| C | processes | requests | seconds | requests/s, whole run | steady requests/s | ideal C/latency | whole / ideal | "
              "**steady / ideal** | client CPU ms / request | server CPU ms / request |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for concurrency, processes in runs:
            requests = max(40, concurrency * args.rounds)
            wall, steady, cpu, server_cpu = measure(url, concurrency, processes, requests, server.pid)
            shown = processes or f"{default_processes(concurrency)} (default)"
            ideal = concurrency / args.latency
            print(f"| {concurrency} | {shown} | {requests} | {wall:.2f} | {requests / wall:.1f} | {steady:.1f} | {ideal:.1f} | "
                  f"{requests / wall / ideal:.2f} | **{steady / ideal:.2f}** | {1000 * cpu / requests:.2f} | {1000 * server_cpu / requests:.2f} |",
                  flush=True)
    finally:
        server.kill()


if __name__ == "__main__":
    main()
