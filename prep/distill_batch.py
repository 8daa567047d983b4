"""``prep distill --batch``: the same plan sent through the OpenAI Batch API (half price, answers within 24 h).

The pending requests of the plan are written as a batch input JSONL (``custom_id``
= ``request_id``), uploaded and submitted; the batch is polled until it ends, and
its output and error files are joined on ``custom_id`` into the same journal a live
run writes, so ``prep build`` reads both alike and a later live or batch run
resumes from it. Requests the batch did not answer (expired, cancelled, failed
lines) are journalled as ``failed`` and sent again by the next run.

Every step is recorded in ``JOURNAL.batches.jsonl`` (append-only, fsynced) before
the next one starts, so a run killed at any moment resumes without paying twice:
an uploaded file whose batch id was never recorded is looked up in the account's
batch list by its input file id; a submitted batch is polled again; answers
already in the journal are not written twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from prep.distill import (
    DONE_STATUSES, FATAL_STATUS, DistillConfig, JournalWriter, RequestSpec, RunStats, _redact, answer_entry, base_entry,
    endpoint_host, failure_entry, plan, read_journal,
)
from prep.errors import PrepError
from prep.fsutil import atomic_write_bytes
from prep.readers.decode import lines_of

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS_PER_BATCH = 50_000  # OpenAI's limit per batch input file
FINAL_STATES = {"completed", "failed", "expired", "cancelled"}


def state_path(journal: Path) -> Path:
    return Path(journal).with_name(Path(journal).name + ".batches.jsonl")


def read_state(path: Path) -> dict[str, dict]:
    """Batches by input file id, folded from the state log (a torn last line is ignored)."""
    uploads: dict[str, dict] = {}
    if not path.exists():
        return uploads
    for line in lines_of(path.read_text(encoding="utf-8")):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        uploads.setdefault(event["input_file_id"], {}).update(event)
    return uploads


def batch_line(spec: RequestSpec, config: DistillConfig) -> dict:
    """One request of the batch input file, the same body a live run sends."""
    body = {"model": config.model, "messages": [{"role": "user", "content": spec.prompt}],
            "temperature": config.temperature, "max_tokens": config.max_tokens}
    return {"custom_id": spec.request_id, "method": "POST", "url": ENDPOINT, "body": body}


class BatchDistiller:
    """Upload, submit, poll and join batches for the pending part of the plan."""

    def __init__(self, config: DistillConfig):
        self.config = config
        self.api_key = os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.base_url, self.host = endpoint_host(config)
        self.state_file = state_path(config.out)
        self.stats = RunStats()

    def _say(self, message: str) -> None:
        if self.config.progress is not False:
            print(f"distill --batch: {message}", file=sys.stderr, flush=True)

    def _record(self, **event) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({**event, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    async def _call(self, what: str, coroutine):
        """An API call of the batch workflow; errors become one sentence (the client retries transient ones)."""
        import openai

        try:
            return await coroutine
        except openai.APIStatusError as err:
            if err.status_code in FATAL_STATUS:
                raise PrepError(f"{FATAL_STATUS[err.status_code]} at {self.host} while {what}; check OPENAI_API_KEY and --base-url.") from None
            if err.status_code in (404, 405):
                raise PrepError(f"{self.host} does not offer the Batch API (HTTP {err.status_code} while {what}); run without --batch.") from None
            raise PrepError(f"{self.host} answered HTTP {err.status_code} while {what}: {_redact(err.message, self.api_key)[:300]}") from None
        except (openai.APITimeoutError, openai.APIConnectionError) as err:
            raise PrepError(f"could not reach {self.host} while {what} ({type(err).__name__}); re-run the same command to resume.") from None

    async def run(self) -> RunStats:
        from openai import AsyncOpenAI

        specs = {spec.request_id: spec for spec in plan(self.config)}
        done = {rid for rid, entry in read_journal(self.config.out).items() if entry.get("status") in DONE_STATUSES}
        uploads = read_state(self.state_file)
        open_uploads = {fid: up for fid, up in uploads.items() if "joined" not in up}
        in_flight = {rid for up in open_uploads.values() for rid in up["request_ids"]}
        foreign = next((up for up in open_uploads.values() if not set(up["request_ids"]) <= specs.keys()), None)
        if foreign is not None:  # joining it now would drop the answers it was paid for
            raise PrepError(f"{self.state_file}: batch {foreign.get('batch_id') or foreign['input_file_id']} was submitted for "
                            "another plan (--model, --temperature, template, topics or counts have changed since); run the "
                            "command it was submitted with to collect it first.")
        pending = [spec for rid, spec in specs.items() if rid not in done and rid not in in_flight]
        self.stats.skipped = len(done & specs.keys())
        start = time.perf_counter()
        client = AsyncOpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.config.timeout_s, max_retries=5)
        journal = JournalWriter(self.config.out)
        try:
            for first in range(0, len(pending), MAX_REQUESTS_PER_BATCH):
                file_id = await self._upload(client, pending[first:first + MAX_REQUESTS_PER_BATCH])
                open_uploads[file_id] = read_state(self.state_file)[file_id]
            for file_id, upload in open_uploads.items():
                if "batch_id" not in upload:
                    upload["batch_id"] = await self._submit(client, file_id, len(upload["request_ids"]))
            await self._poll_and_join(client, open_uploads, specs, journal)
        finally:
            self.stats.seconds = time.perf_counter() - start
            journal.close()
            await client.close()
        return self.stats

    async def _upload(self, client, chunk: list[RequestSpec]) -> str:
        lines = "".join(json.dumps(batch_line(spec, self.config), ensure_ascii=False) + "\n" for spec in chunk)
        input_path = self.config.out.with_name(f"{self.config.out.stem}.batch-input-{chunk[0].request_id[:8]}.jsonl")
        atomic_write_bytes(input_path, lines.encode("utf-8"))
        uploaded = await self._call("uploading the batch input", client.files.create(file=input_path, purpose="batch"))
        self._record(input_file_id=uploaded.id, input_path=input_path.name, request_ids=[spec.request_id for spec in chunk])
        self._say(f"uploaded {len(chunk)} requests as {uploaded.id}")
        return uploaded.id

    async def _submit(self, client, file_id: str, count: int) -> str:
        """Create the batch for an uploaded file, unless a killed run already did (found by its input file)."""
        existing = await self._call("listing batches", client.batches.list(limit=100))
        batch = next((b for b in existing.data if b.input_file_id == file_id), None)
        if batch is None:
            batch = await self._call("creating the batch", client.batches.create(
                input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h",
                metadata={"journal": self.config.out.name, "requests": str(count)}))
        self._record(input_file_id=file_id, batch_id=batch.id)
        self._say(f"batch {batch.id} submitted ({count} requests); re-running the same command resumes polling it")
        return batch.id

    async def _poll_and_join(self, client, uploads: dict[str, dict], specs: dict[str, RequestSpec], journal: JournalWriter) -> None:
        waiting, last_seen = dict(uploads), {}
        while waiting:
            for file_id, upload in list(waiting.items()):
                batch = await self._call("checking the batch", client.batches.retrieve(upload["batch_id"]))
                counts = batch.request_counts
                seen = (batch.status, counts.completed if counts else None)
                if last_seen.get(file_id) != seen:
                    last_seen[file_id] = seen
                    self._say(f"batch {batch.id}: {batch.status}" + (f", {counts.completed}/{counts.total} answered, {counts.failed} failed" if counts else ""))
                if batch.status in FINAL_STATES:
                    await self._join(client, batch, upload, specs, journal)
                    self._record(input_file_id=file_id, batch_id=batch.id, joined=batch.status)
                    del waiting[file_id]
            if waiting:
                await asyncio.sleep(self.config.poll_s)

    async def _join(self, client, batch, upload: dict, specs: dict[str, RequestSpec], journal: JournalWriter) -> None:
        """Write one journal entry per request of the batch; unanswered requests are journalled as failed."""
        done = {rid for rid, entry in read_journal(self.config.out).items() if entry.get("status") in DONE_STATUSES}
        lines = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self._call("downloading batch results", client.files.content(file_id))
                lines += [json.loads(line) for line in lines_of(content.text) if line.strip()]  # (U+2028 in an answer)
        answered = set()
        for line in lines:
            spec = specs.get(line.get("custom_id"))
            if spec is None or spec.request_id in done:
                continue
            answered.add(spec.request_id)
            self._write(journal, self._line_entry(spec, batch, line))
        for rid in upload["request_ids"]:
            if rid not in answered and rid not in done and rid in specs:
                self._write(journal, self._failed(specs[rid], batch, f"batch {batch.status}: no answer for this request"))

    def _write(self, journal: JournalWriter, entry: dict) -> None:
        journal.write(entry)
        self.stats.add(entry)

    def _base(self, spec: RequestSpec, batch) -> dict:
        return {**base_entry(spec, self.config, self.host, 1, float(batch.created_at)), "batch_id": batch.id}

    def _failed(self, spec: RequestSpec, batch, error: str) -> dict:
        return failure_entry(self._base(spec, batch), _redact(error, self.api_key)[:300])

    def _line_entry(self, spec: RequestSpec, batch, line: dict) -> dict:
        response = line.get("response") or {}
        if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
            return answer_entry(self._base(spec, batch), spec, response["body"])
        error = line.get("error") or (response.get("body") or {}).get("error") or {}
        return self._failed(spec, batch, f"HTTP {response.get('status_code')}: {error.get('message') or error}")
