"""``prep distill``: knowledge distillation from a teacher LLM through any OpenAI-compatible API.

A run is a deterministic plan of requests (template x topic x persona x sample
index, each with a stable ``request_id``) executed by a sliding window of C
workers. Every finished request is appended to a JSONL journal, flushed at
once and fsynced by a background thread, so a crash loses at most the requests
in flight; re-running the same command skips every request already answered
and retries the failed ones. ``--batch`` sends the plan through the OpenAI Batch
API instead (``prep.distill_batch``), into the same journal.

Retries: 408/409/429/5xx, time-outs, connection errors and malformed bodies,
with jittered exponential back-off; a 429 also pauses every worker for its
``retry-after``. No retry on 400/404; 401/403 and ``insufficient_quota`` stop
the run with one clear sentence. The API key is never written anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import orjson
from tqdm import tqdm

from prep.errors import PrepError
from prep.fsutil import read_yaml_mapping
from prep.readers.decode import lines_of
from prep.resources import bundled
from prep.textformat import parse_dialogues, parse_text

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_TOPICS = bundled("topics", "topics.yaml")
DONE_STATUSES = {"ok", "truncated", "parse_error"}  # paid answers: never sent again
RETRYABLE_STATUS = {408, 409, 429}
FATAL_STATUS = {401: "the API key was refused (401)", 403: "access was denied (403)"}


@dataclass
class Template:
    """A prompt template file: its id (file stem), text and content hash."""

    template_id: str
    text: str
    sha256: str

    @classmethod
    def load(cls, path: Path) -> "Template":
        text = Path(path).read_text(encoding="utf-8")
        return cls(Path(path).stem, text, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])


@dataclass
class DistillConfig:
    """Everything one distillation run needs (the key comes from the environment only)."""

    out: Path
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    requests: int = 10
    pairs_per_request: int = 20
    concurrency: int = 8
    topics: Path = DEFAULT_TOPICS
    multi_turn_ratio: float = 0.0
    temperature: float = 0.9
    seed: int = 0
    max_cost: float | None = None
    max_tokens: int = 4096
    timeout_s: float = 120.0
    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    price_in_per_m: float = 0.15  # USD per million prompt tokens
    price_out_per_m: float = 0.60  # USD per million completion tokens
    single_template: Path = TEMPLATE_DIR / "single_turn.txt"
    multi_template: Path = TEMPLATE_DIR / "multi_turn.txt"
    progress: bool | None = None  # None: a bar only on a terminal
    batch: bool = False  # OpenAI Batch API instead of live requests (see prep.distill_batch)
    batch_discount: float = 0.5  # Batch API price relative to live requests
    poll_s: float = 30.0  # Batch API: seconds between status checks
    processes: int | None = None  # client processes sharing the plan; None: one per PROCESS_SHARE requests in flight
    spent_before: float = 0.0  # estimated cost of what the journal already holds, counted against max_cost


# Requests in flight one client process carries. One event loop spends ~2 ms of CPU a request on a server-class
# core (16-core H200 host: 0.98 of ideal at C = 64 with 200 ms latency, 0.86 at C = 128, where two processes
# give 0.97); a second process costs ~2 s of start-up (spawn, importing openai). bench/README.md.
PROCESS_SHARE = 64


@dataclass
class RequestSpec:
    """One planned request: what to ask and its deterministic id."""

    request_id: str
    index: int
    multi_turn: bool
    template: Template
    topic: dict
    persona: str
    prompt: str


@dataclass
class RunStats:
    ok: int = 0
    truncated: int = 0
    parse_error: int = 0
    failed: int = 0
    retries: int = 0
    skipped: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    pairs: int = 0
    stopped: str | None = None
    seconds: float = 0.0
    by_status: Counter = field(default_factory=Counter)

    COUNTED = ("ok", "truncated", "parse_error", "failed", "retries", "prompt_tokens", "completion_tokens", "pairs")

    def cost(self, config: DistillConfig) -> float:
        discount = config.batch_discount if config.batch else 1.0
        return discount * (self.prompt_tokens * config.price_in_per_m + self.completion_tokens * config.price_out_per_m) / 1e6

    def add(self, entry: dict) -> None:
        """Count one journalled request."""
        status = entry["status"]
        setattr(self, status, getattr(self, status) + 1)
        self.by_status[status] += 1
        usage = entry.get("usage") or {}
        self.prompt_tokens += usage.get("prompt_tokens") or 0
        self.completion_tokens += usage.get("completion_tokens") or 0
        self.pairs += len(entry.get("pairs") or [])

    def merge(self, other: "RunStats") -> None:
        """Add another shard's counts to these."""
        for name in self.COUNTED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.by_status.update(other.by_status)
        self.stopped = self.stopped or other.stopped


class FatalError(Exception):
    """Stop the whole run: more requests cannot succeed."""


def load_topics(path: Path) -> dict:
    """The topic grid: areas x concerns, and personas."""
    grid = read_yaml_mapping(path, "--topics")
    if not all(isinstance(grid.get(k), list) and grid[k] for k in ("areas", "concerns", "personas")):
        raise PrepError(f"--topics {path}: expected non-empty lists 'areas', 'concerns' and 'personas'.")
    return grid


def plan(config: DistillConfig) -> list[RequestSpec]:
    """The deterministic list of requests for this configuration."""
    grid = load_topics(config.topics)
    templates = {False: Template.load(config.single_template), True: Template.load(config.multi_template)}
    specs = []
    for index in range(config.requests):
        rng = random.Random(f"{config.seed}:{index}")
        multi = rng.random() < config.multi_turn_ratio
        topic = {"area": rng.choice(grid["areas"]), "concern": rng.choice(grid["concerns"])}
        persona = rng.choice(grid["personas"])
        template = templates[multi]
        prompt = template.text.format(n=config.pairs_per_request, persona=persona, **topic)
        identity = {
            "template": template.template_id, "template_sha256": template.sha256, "topic": topic, "persona": persona,
            "model": config.model, "temperature": config.temperature, "max_tokens": config.max_tokens,
            "pairs": config.pairs_per_request, "seed": config.seed, "index": index,
        }
        request_id = hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]
        specs.append(RequestSpec(request_id, index, multi, template, topic, persona, prompt))
    return specs


def pending_specs(config: DistillConfig) -> tuple[list[RequestSpec], int]:
    """The planned requests the journal does not hold an answer for, and how many it does."""
    from prep.distill_batch import read_state, state_path

    specs = plan(config)
    done = {rid for rid, entry in read_journal(config.out).items() if entry.get("status") in DONE_STATUSES}
    # Requests in a batch not yet collected are paid for already: a live run leaves them to --batch.
    in_batch = {rid for upload in read_state(state_path(config.out)).values()
                if "joined" not in upload and upload.get("batch_id")  # (an upload never submitted holds nothing)
                for rid in upload.get("request_ids", [])} - done
    held = [spec for spec in specs if spec.request_id in in_batch]
    if held:
        warnings.warn(f"{len(held)} requests of the plan wait in a batch not yet collected; a live run leaves them out "
                      "(collect them with the same command and --batch)", stacklevel=2)
    pending = [spec for spec in specs if spec.request_id not in done and spec.request_id not in in_batch]
    return pending, len(specs) - len(pending) - len(held)


def read_journal(path: Path) -> dict[str, dict]:
    """The last entry per request id; a torn last line (crash mid-write) is ignored."""
    entries: dict[str, dict] = {}
    if not Path(path).exists():
        return entries
    for line in lines_of(Path(path).read_text(encoding="utf-8", errors="replace")):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "request_id" in entry:
            entries[entry["request_id"]] = entry
    return entries



def _with_cause(err: BaseException) -> str:
    """The error and what lies under it: the aiohttp transport reports a refused connection as "Request timed out."."""
    root = err
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    return str(err) if root is err else f"{err} ({type(root).__name__}: {root})"

def parse_answer(text: str, multi_turn: bool, finish_reason: str | None) -> tuple[str, list[list[dict]]]:
    """Status and conversations found in a teacher's answer (complete ones only)."""
    parsed = parse_dialogues(text) if multi_turn else parse_text(text)
    conversations = [[{"role": t.role, "content": t.content} for t in p.turns] for p in parsed if not p.error]
    if not conversations:
        return "parse_error", []
    return ("truncated" if finish_reason == "length" else "ok"), conversations


class JournalWriter:
    """Append-only JSONL: each line goes to the OS in one ``write`` on an ``O_APPEND`` descriptor (a killed
    process loses nothing written, and several processes appending to one journal never interleave lines) and is
    fsynced by a background thread that covers every line written since its last fsync (group commit), so the
    event loop never waits for the disk."""

    def __init__(self, path: Path, repair: bool = True):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if repair:
            self.repair_torn_tail(path)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._dirty = threading.Event()
        self._closing = False
        self._sync_error: OSError | None = None
        self._syncer = threading.Thread(target=self._sync_loop, name="journal-fsync", daemon=True)
        self._syncer.start()

    @staticmethod
    def repair_torn_tail(path: Path) -> None:
        """Make sure a new line never glues onto a torn one left by a crash."""
        if path.exists() and path.stat().st_size:
            with open(path, "rb+") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")

    def _sync_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            if self._closing:
                return
            try:
                os.fsync(self._fd)
            except OSError as err:  # reported by the next write: the run must not go on without durability
                self._sync_error = err
                return

    def _failed(self, err: OSError) -> PrepError:
        return PrepError(f"cannot write the journal {self.path} ({err.strerror or err}); what it holds is kept, "
                         "fix the disk and re-run the same command to resume.")

    def write(self, entry: dict) -> None:
        if self._sync_error is not None:
            raise self._failed(self._sync_error)
        whole = line = memoryview(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
        try:
            while line:  # a regular file takes the whole line at once; the loop only guards a short write
                line = line[os.write(self._fd, line):]
        except OSError as err:
            if len(line) < len(whole):  # a torn line: end it, so that the next line (maybe another process's) stays whole
                with contextlib.suppress(OSError):
                    os.write(self._fd, b"\n")
            raise self._failed(err) from None
        self._dirty.set()

    def close(self) -> None:
        self._closing = True
        self._dirty.set()
        self._syncer.join()
        try:
            os.fsync(self._fd)
        except OSError as err:
            raise self._failed(err) from None
        finally:
            os.close(self._fd)


def _redact(text: str, secret: str | None) -> str:
    text = str(text)
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"sk-[A-Za-z0-9_\-*]{6,}", "sk-***", text)


class Distiller:
    """Runs the plan (or one process's shard of it) with C concurrent workers against an OpenAI-compatible
    endpoint. ``shared`` (``prep.distill_processes.SharedRun``) is set when several processes share one run:
    their pause after a 429, their stop and their counts (for --max-cost and the progress bar) are then
    common to all."""

    def __init__(self, config: DistillConfig, shard: list[int] | None = None, shared=None):
        self.config = config
        self.api_key = os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.base_url, self.host = endpoint_host(config)
        self.stats = RunStats()
        self.shard = shard  # plan indices this process sends (all pending ones when None)
        self.shared = shared
        self._pause_until = 0.0
        self._stop_reason: str | None = None

    async def run(self) -> RunStats:
        from openai import AsyncOpenAI, DefaultAioHttpClient

        if self.shard is None:
            pending, self.stats.skipped = pending_specs(self.config)
        else:
            specs = plan(self.config)
            pending = [specs[index] for index in self.shard]
        queue: asyncio.Queue = asyncio.Queue()
        for spec in pending:
            queue.put_nowait(spec)
        # aiohttp as the transport: about a third less client CPU per request than the default httpx pool at C = 64.
        client = AsyncOpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.config.timeout_s, max_retries=0,
                             http_client=DefaultAioHttpClient())
        journal = JournalWriter(self.config.out, repair=self.shard is None)
        bar = tqdm(total=len(pending), desc="distill", unit="req", disable=None if self.config.progress is None else not self.config.progress)
        start = time.perf_counter()
        workers: list[asyncio.Task] = []
        try:
            if self.shared is not None:
                await self.shared.start_together()
            workers = [asyncio.create_task(self._worker(client, queue, journal, bar)) for _ in range(max(1, self.config.concurrency))]
            await asyncio.gather(*workers)
        finally:
            for task in workers:  # when one worker fails, stop the others before the journal closes under them
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self.stats.seconds = time.perf_counter() - start
            bar.close()
            try:
                journal.close()
            finally:
                await client.close()
        self.stats.stopped = self._stop_reason
        return self.stats

    async def _worker(self, client, queue: asyncio.Queue, journal: JournalWriter, bar) -> None:
        while not self._stopping():
            try:
                spec = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            spent = self._totals().cost(self.config) + self.config.spent_before
            if self.config.max_cost is not None and spent >= self.config.max_cost:
                self._stop(f"--max-cost {self.config.max_cost} reached (estimated ${spent:.4f}, earlier runs on this journal included)")
                return
            try:
                entry = await self._request_with_retries(client, spec)
            except FatalError as err:
                self._stop(str(err))
                return
            journal.write(entry)
            self.stats.add(entry)
            if self.shared is not None:
                self.shared.add(entry)
            show_progress(bar, self.stats)

    def _totals(self) -> RunStats:
        """The counts of the whole run: this process's, or every process's when the run is shared."""
        return self.stats if self.shared is None else self.shared.snapshot()

    def _stopping(self) -> bool:
        return bool(self._stop_reason) or (self.shared is not None and self.shared.stopped())

    def _stop(self, reason: str) -> None:
        self._stop_reason = reason
        if self.shared is not None:
            self.shared.stop()

    def _count_retry(self) -> None:
        self.stats.retries += 1
        if self.shared is not None:
            self.shared.count_retry()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _request_with_retries(self, client, spec: RequestSpec) -> dict:
        import aiohttp
        import openai

        last_error = ""
        for attempt in range(1, self.config.max_attempts + 1):
            wait = self._paused_until() - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            started = time.time()
            try:
                # The client's generic post: the same auth, headers and errors as chat.completions.create, without
                # its per-request parameter transform and response models (two thirds of the client's CPU time).
                completion = await client.post("/chat/completions", cast_to=object, body={
                    "model": self.config.model,
                    "messages": [{"role": "user", "content": spec.prompt}],
                    "temperature": self.config.temperature,
                    "max_tokens": self.config.max_tokens,
                })
                if isinstance(completion, (str, bytes)):  # JSON served without a JSON content type
                    completion = json.loads(completion)
                if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list) or not completion["choices"]:
                    raise ValueError(f"no choices in the answer: {str(completion)[:200]}")
                return self._entry(spec, completion, attempt, started)
            except openai.APIStatusError as err:
                status, body = err.status_code, getattr(err, "body", None)
                code = (body or {}).get("code") if isinstance(body, dict) else None
                if code == "insufficient_quota" or "insufficient_quota" in str(err):
                    raise FatalError("the API account has no quota left (insufficient_quota); top up or use another key, then re-run to resume.")
                if status in FATAL_STATUS:
                    raise FatalError(f"{FATAL_STATUS[status]} at {self.host}; check OPENAI_API_KEY and --base-url, then re-run to resume.")
                last_error = f"HTTP {status}: {_redact(err.message, self.api_key)[:300]}"
                if status == 404:
                    raise FatalError(f"{self.host} answered 404 for model '{self.config.model}'; check --model and --base-url.")
                if status not in RETRYABLE_STATUS and status < 500:
                    return self._failure(spec, attempt, started, last_error)
                if status == 429:
                    self._pause_for(err.response.headers.get("retry-after"), attempt)
            except (openai.APITimeoutError, openai.APIConnectionError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
                last_error = f"{type(err).__name__}: {_redact(_with_cause(err), self.api_key)[:300]}"
            except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as err:
                last_error = f"malformed response: {_redact(err, self.api_key)[:300]}"
            if attempt < self.config.max_attempts:
                self._count_retry()
                await asyncio.sleep(self._backoff(attempt))
        return self._failure(spec, self.config.max_attempts, time.time(), last_error)

    def _pause_for(self, retry_after: str | None, attempt: int) -> None:
        """Adaptive back-off: a 429 pauses every worker for retry-after (or the back-off)."""
        try:
            delay = float(retry_after) if retry_after is not None else self._backoff(attempt)
        except ValueError:
            delay = self._backoff(attempt)
        until = time.monotonic() + min(delay, self.config.backoff_max_s)  # CLOCK_MONOTONIC: one clock for all processes
        self._pause_until = max(self._pause_until, until)
        if self.shared is not None:
            self.shared.pause(until)

    def _paused_until(self) -> float:
        return self._pause_until if self.shared is None else max(self._pause_until, self.shared.paused_until())

    def _base_entry(self, spec: RequestSpec, attempts: int, started: float) -> dict:
        return base_entry(spec, self.config, self.host, attempts, started)

    def _entry(self, spec: RequestSpec, completion: dict, attempts: int, started: float) -> dict:
        return answer_entry(self._base_entry(spec, attempts, started), spec, completion)

    def _failure(self, spec: RequestSpec, attempts: int, started: float, error: str) -> dict:
        return failure_entry(self._base_entry(spec, attempts, started), error)


def endpoint_host(config: DistillConfig) -> tuple[str, str]:
    """The endpoint URL (option, then $OPENAI_BASE_URL, then OpenAI) and its host for the journal."""
    base_url = config.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    return base_url, urlparse(base_url).netloc or base_url


def base_entry(spec: RequestSpec, config: DistillConfig, host: str, attempts: int, started: float) -> dict:
    """The fields every journal entry carries: what was asked, of whom, when."""
    return {
        "request_id": spec.request_id,
        "index": spec.index,
        "multi_turn": spec.multi_turn,
        "template_id": spec.template.template_id,
        "template_sha256": spec.template.sha256,
        "topic": spec.topic,
        "persona": spec.persona,
        "model": config.model,
        "endpoint_host": host,
        "temperature": config.temperature,
        "attempts": attempts,
        "time": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "latency_s": round(time.time() - started, 3),
    }


def answer_entry(base: dict, spec: RequestSpec, completion: dict) -> dict:
    """A journal entry from a chat-completion body (a dict, as the chat and batch endpoints return it)."""
    choice = (completion.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    status, pairs = parse_answer(text, spec.multi_turn, choice.get("finish_reason"))
    usage = completion.get("usage") or {}
    return {**base, "status": status, "finish_reason": choice.get("finish_reason"),
            "usage": {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
            "response_model": completion.get("model"), "raw": text, "pairs": pairs}


def show_progress(bar, stats: RunStats) -> None:
    """Move the progress bar to the journalled count and show the tallies."""
    bar.update(stats.ok + stats.truncated + stats.parse_error + stats.failed - bar.n)
    bar.set_postfix(ok=stats.ok, failed=stats.failed, retries=stats.retries, tokens=stats.prompt_tokens + stats.completion_tokens,
                    refresh=False)


def failure_entry(base: dict, error: str) -> dict:
    return {**base, "status": "failed", "error": error, "raw": None, "pairs": []}


def default_processes(concurrency: int) -> int:
    """Client processes for ``concurrency`` requests in flight: one per PROCESS_SHARE, at most one per CPU; one
    where appends from several processes are not atomic (not POSIX)."""
    if os.name != "posix":
        return 1
    return max(1, min(os.cpu_count() or 1, concurrency // PROCESS_SHARE))


def distill(config: DistillConfig) -> RunStats:
    """Run (or resume) a distillation and return its statistics; one run per journal at a time."""
    check_options(config)
    if Path(config.out).is_dir():
        raise PrepError(f"--out {config.out}: is a folder; expected the journal file (JSONL) to write or resume.")
    _check_is_journal(Path(config.out))
    with _only_run(Path(config.out)):
        if config.max_cost is not None:
            config = dataclasses.replace(config, spent_before=journal_cost(config.out, config))
        return _distill(config)


def check_options(config: DistillConfig) -> None:
    """Refuse options that cannot work, before anything is written (the journal's folder, its lock)."""
    if config.requests < 0 or config.concurrency < 1 or config.pairs_per_request < 1:
        raise PrepError("--requests must be >= 0, --concurrency and --pairs-per-request >= 1.")
    if config.max_attempts < 1 or config.max_tokens < 1 or not config.timeout_s > 0 or not config.poll_s > 0:
        raise PrepError(f"--max-attempts {config.max_attempts} and --max-tokens {config.max_tokens} must be 1 or more, "
                        f"--timeout {config.timeout_s} and --poll-interval {config.poll_s} more than 0.")
    if config.max_cost is not None and not config.max_cost > 0:
        raise PrepError(f"--max-cost {config.max_cost}: expected an amount in dollars above 0.")
    if not 0.0 <= config.temperature <= 2.0:  # the API's range; NaN was sent, refused, and retried as a bad response
        raise PrepError(f"--temperature {config.temperature}: expected a number from 0 to 2.")
    if not (config.price_in_per_m >= 0 and config.price_out_per_m >= 0):
        raise PrepError(f"--price-in {config.price_in_per_m} / --price-out {config.price_out_per_m}: expected dollars per "
                        "million tokens, 0 or more.")
    if not 0.0 <= config.multi_turn_ratio <= 1.0:
        raise PrepError(f"--multi-turn-ratio {config.multi_turn_ratio}: expected a fraction from 0 to 1.")
    if config.batch and config.max_cost is not None:
        raise PrepError("--max-cost cannot cap a --batch run (a batch is priced after it ends); cap it with --requests.")
    if config.processes is not None and config.processes < 1:
        raise PrepError(f"--processes {config.processes}: expected 1 or more.")
    if os.name != "posix" and config.processes not in (None, 1):
        raise PrepError("--processes above 1 needs Linux or macOS (appends from several processes to one journal).")
    if config.batch and config.processes not in (None, 1):
        raise PrepError("--processes applies to live requests; a --batch run uploads its requests as files, leave it out.")
    load_topics(config.topics)  # a bad grid would stop the plan after the journal's folder and lock were made
    _check_endpoint(config)


def _check_endpoint(config: DistillConfig) -> None:
    """A base URL that is no http(s) URL, or OpenAI's own API without a key, was retried for half a minute per
    request before failing; a local server (vLLM, Ollama) takes any key."""
    base_url, host = endpoint_host(config)
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise PrepError(f"--base-url {base_url}: expected an http(s) URL such as http://127.0.0.1:8000/v1 "
                        "(from --base-url or $OPENAI_BASE_URL).")
    if host.endswith("openai.com") and not os.environ.get("OPENAI_API_KEY"):
        raise PrepError(f"OPENAI_API_KEY is not set and {host} needs one; export it, or pass --base-url for a "
                        "server that needs none.")


_JOURNAL_START = b'{"request_id"'  # every journal line's first key (base_entry)


def _check_is_journal(out: Path) -> None:
    """Refuse an --out that holds something other than a journal (a dataset given by mistake would have the run's
    lines appended to it); an empty file or a torn first journal line (a crash in the first write) is a journal, a
    one-line file without a final newline (a compact json.dump of a dataset) is not."""
    try:
        with out.open("rb") as file:
            first = next((line for line in file if line.strip()), b"")
    except FileNotFoundError:
        return
    except OSError as err:
        raise PrepError(f"--out {out}: cannot be read ({err.strerror or err}); expected the journal file (JSONL) to write or resume.") from None
    start = first.removeprefix(b"\xef\xbb\xbf").strip()
    # A journal line, whole or torn by a crash (then a resume closes it with a newline), or the torn start of one.
    if not start or start.startswith(_JOURNAL_START) or (not first.endswith(b"\n") and _JOURNAL_START.startswith(start)):
        return
    try:
        entry = json.loads(first)
    except ValueError:
        entry = None
    if not (isinstance(entry, dict) and "request_id" in entry):
        raise PrepError(f"--out {out}: holds something other than a prep distill journal (its first line is no journal "
                        "entry); expected a new file or a journal to resume. Nothing was written to it.")


@contextlib.contextmanager
def _only_run(out: Path) -> Iterator[None]:
    """Hold ``OUT.lock`` for the run: a second run on the same journal at the same time would send (and pay for)
    every request again, and its late lines could hide the first run's answers."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = open(out.with_name(out.name + ".lock"), "a")
    except OSError as err:
        raise PrepError(f"--out {out}: cannot write there ({err.strerror}).") from None
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # not POSIX: no lock (and a single process, see default_processes)
        pass
    except BlockingIOError:
        handle.close()
        raise PrepError(f"--out {out}: another prep distill is writing this journal now; wait for it to end, or use another --out.") from None
    try:
        yield
    finally:
        handle.close()


def journal_cost(out: Path, config: DistillConfig) -> float:
    """The estimated cost of every answer the journal holds (each line is a paid completion, superseded or not);
    an answer collected from a batch (a line with ``batch_id``) at the batch price."""
    spent = {False: RunStats(), True: RunStats()}
    for line in lines_of(Path(out).read_text(encoding="utf-8", errors="replace")) if Path(out).is_file() else []:
        try:
            entry = json.loads(line)
            usage = entry.get("usage") or {}
        except (json.JSONDecodeError, AttributeError):
            continue
        stats = spent[bool(entry.get("batch_id"))]
        stats.prompt_tokens += usage.get("prompt_tokens") or 0
        stats.completion_tokens += usage.get("completion_tokens") or 0
    return sum(stats.cost(dataclasses.replace(config, batch=batched)) for batched, stats in spent.items())


def _distill(config: DistillConfig) -> RunStats:
    if config.batch:
        from prep.distill_batch import BatchDistiller

        return asyncio.run(BatchDistiller(config).run())
    processes = config.processes or default_processes(config.concurrency)
    if processes > 1:
        from prep.distill_processes import run_in_processes

        return run_in_processes(config, min(processes, config.concurrency))
    return asyncio.run(Distiller(config).run())
