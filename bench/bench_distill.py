"""Distillation throughput against a local OpenAI-compatible server with fixed latency.

For C = 1, 8, 32, 64, 128 requests in flight, achieved requests/s versus the
ideal C / latency, and the client's CPU time per request. The server (tests/
fake_openai.py) runs in its own process so that its CPU is not counted.

    python bench/bench_distill.py [--latency 0.2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
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


def main() -> None:
    import openai  # noqa: F401  (imported before timing: 1-2 s the first time)

    from prep.distill import DistillConfig, distill

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(ROOT / "tests"), str(args.latency)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        print(f"latency {args.latency} s per request, 20 pairs per answer")
        print("| C | requests | seconds | requests/s | ideal C/latency | achieved / ideal | client CPU ms / request | server CPU ms / request |")
        print("|---|---|---|---|---|---|---|---|")
        for concurrency in (1, 8, 32, 64, 128):
            requests = max(40, concurrency * 12)
            with tempfile.TemporaryDirectory() as tmp:
                config = DistillConfig(out=Path(tmp) / "j.jsonl", base_url=url, model="bench", requests=requests,
                                       concurrency=concurrency, progress=False, timeout_s=30)
                cpu, wall, server_cpu = time.process_time(), time.perf_counter(), process_cpu_s(server.pid)
                stats = distill(config)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                server_cpu = process_cpu_s(server.pid) - server_cpu
            assert stats.ok == requests, stats
            rate, ideal = requests / wall, concurrency / args.latency
            print(f"| {concurrency} | {requests} | {wall:.2f} | {rate:.1f} | {ideal:.1f} | {rate / ideal:.2f} | {1000 * cpu / requests:.2f} | {1000 * server_cpu / requests:.2f} |")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
