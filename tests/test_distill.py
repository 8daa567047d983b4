"""prep distill against real HTTP servers on 127.0.0.1: a scriptable fake and llamafactory-cli api."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import free_port, wait_for_http
from conftest import ROOT, tool_env
from fake_openai import Behaviour, FakeOpenAI, prompt_hash, selected
from prep.build import BuildOptions, build
from prep.distill import DistillConfig, JournalWriter, distill, plan, read_journal
from prep.errors import PrepError

SECRET = "sk-test-SECRETKEY-0123456789"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def config(tmp_path: Path, base_url: str, **changes) -> DistillConfig:
    defaults = dict(out=tmp_path / "journal.jsonl", base_url=base_url, model="teacher-x", requests=24, pairs_per_request=4,
                    concurrency=8, timeout_s=1.0, backoff_base_s=0.05, backoff_max_s=0.5, max_attempts=6, progress=False)
    return DistillConfig(**{**defaults, **changes})


def journal_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def test_exact_ok_counts_under_transient_faults(tmp_path):
    behaviour = Behaviour(latency_s=0.02, fail_share=0.3, fail_status=500, timeout_share=0.15, timeout_sleep_s=5,
                          malformed_share=0.15)
    with FakeOpenAI(behaviour) as url:
        stats = distill(config(tmp_path, url))
    entries = journal_lines(tmp_path / "journal.jsonl")
    assert [e["status"] for e in entries] == ["ok"] * 24
    assert len({e["request_id"] for e in entries}) == 24
    assert all(len(e["pairs"]) == 4 and e["pairs"][0][0]["role"] == "user" for e in entries)
    assert stats.ok == 24 and stats.retries > 0 and stats.pairs == 96
    retried = [e for e in entries if e["attempts"] > 1]
    assert retried and all(e["endpoint_host"].startswith("127.0.0.1:") for e in entries)


def test_429_retry_after_pauses_every_worker(tmp_path):
    fake = FakeOpenAI(Behaviour(fail_share=0.5, fail_status=429, retry_after_s=0.6))
    with fake as url:
        stats = distill(config(tmp_path, url, requests=12, backoff_base_s=0.01))
    assert stats.ok == 12
    limited = [r["time"] for r in fake.requests if r["status"] == 429]
    first_limit = min(limited)
    # Past the first burst (requests already in flight), nothing is sent until retry-after has passed.
    assert not [r for r in fake.requests if first_limit + 0.15 < r["time"] < first_limit + 0.5]


def test_no_retry_on_400_and_stop_on_bad_key_or_no_quota(tmp_path):
    with FakeOpenAI(Behaviour(fail_share=1.0, fail_status=400, fail_times=5)) as url:
        stats = distill(config(tmp_path, url, requests=3))
    assert stats.failed == 3 and stats.retries == 0
    assert all("HTTP 400" in e["error"] for e in journal_lines(tmp_path / "journal.jsonl"))

    with FakeOpenAI(Behaviour(api_key="another-key")) as url:
        result = subprocess.run([sys.executable, "-m", "prep.cli", "distill", "--out", str(tmp_path / "j2.jsonl"), "--base-url", url,
                                 "--requests", "3"], capture_output=True, text=True, env=tool_env(), cwd=ROOT)
    assert result.returncode == 3
    assert "the API key was refused (401)" in result.stderr and SECRET not in result.stderr + result.stdout

    with FakeOpenAI(Behaviour(quota_exhausted=True)) as url:
        stats = distill(config(tmp_path, url, out=tmp_path / "j3.jsonl", requests=5))
    assert stats.stopped and "insufficient_quota" in stats.stopped and stats.ok == 0


def test_length_keeps_complete_pairs_and_refusal_is_a_parse_error(tmp_path):
    with FakeOpenAI(Behaviour(length_share=1.0)) as url:
        distill(config(tmp_path, url, requests=2))
    entries = journal_lines(tmp_path / "journal.jsonl")
    assert [e["status"] for e in entries] == ["truncated", "truncated"]
    assert all(len(e["pairs"]) == 3 and e["finish_reason"] == "length" for e in entries)

    with FakeOpenAI(Behaviour(refusal_share=1.0)) as url:
        distill(config(tmp_path, url, out=tmp_path / "r.jsonl", requests=2))
    refused = journal_lines(tmp_path / "r.jsonl")
    assert [e["status"] for e in refused] == ["parse_error", "parse_error"] and all(e["raw"] for e in refused)


def test_multi_turn_ratio_asks_for_dialogues(tmp_path):
    with FakeOpenAI() as url:
        distill(config(tmp_path, url, requests=20, multi_turn_ratio=0.5))
    entries = journal_lines(tmp_path / "journal.jsonl")
    multi = [e for e in entries if e["multi_turn"]]
    assert 4 <= len(multi) <= 16 and {e["template_id"] for e in multi} == {"multi_turn"}
    assert all(len(conv) == 4 for e in multi for conv in e["pairs"])


@pytest.mark.parametrize("processes", [1, 2])
def test_resume_after_sigkill_loses_nothing_and_repeats_nothing(tmp_path, processes):
    journal = tmp_path / "journal.jsonl"
    fake = FakeOpenAI(Behaviour(latency_s=0.3))
    with fake as url:
        command = [sys.executable, "-m", "prep.cli", "distill", "--out", str(journal), "--base-url", url, "--model", "teacher-x",
                   "--requests", "40", "--pairs-per-request", "3", "--concurrency", "4", "--processes", str(processes)]
        process = subprocess.Popen(command, env=tool_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and (not journal.exists() or journal.read_text(encoding="utf-8").count("\n") < 8):
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        time.sleep(0.5)  # a client process outliving the killed parent would go on sending and writing
        before = read_journal(journal)
        assert 8 <= len(before) < 40
        seen_before = len(fake.requests)
        time.sleep(1.0)
        assert len(fake.requests) == seen_before and read_journal(journal) == before, "a client process outlived prep distill"
        subprocess.run(command, env=tool_env(), cwd=ROOT, check=True, capture_output=True)
    after = journal_lines(journal)
    ids = [e["request_id"] for e in after]
    assert len(ids) == len(set(ids)) == 40 and all(e["status"] == "ok" for e in after)
    specs = plan(DistillConfig(out=journal, model="teacher-x", requests=40, pairs_per_request=3))
    hash_of = {s.request_id: prompt_hash([{"role": "user", "content": s.prompt}]) for s in specs}
    resent = {r["prompt_hash"] for r in fake.requests[seen_before:]}
    assert not resent & {hash_of[rid] for rid in before}, "a request journalled as ok was sent again"


def test_a_429_in_one_client_process_pauses_the_other(tmp_path):
    """Two processes, one worker each; the plan's seed is picked so that only the first process's requests get
    429s: the second process sees none itself and must still wait out the first one's retry-after."""
    def fails(spec):
        return selected([{"role": "user", "content": spec.prompt}], "fail", 0.3)

    def chosen(seed):
        specs = plan(config(tmp_path, "http://unused/v1", requests=12, seed=seed))
        return fails(specs[0]) and not any(fails(spec) for spec in specs[1::2])

    seed = next(seed for seed in range(500) if chosen(seed))
    fake = FakeOpenAI(Behaviour(latency_s=0.1, fail_share=0.3, fail_status=429, retry_after_s=0.6))
    with fake as url:
        stats = distill(config(tmp_path, url, requests=12, concurrency=2, processes=2, seed=seed, backoff_base_s=0.01))
    assert stats.ok == 12
    first_limit = min(r["time"] for r in fake.requests if r["status"] == 429)
    # Sent by either process after the 429 came back (0.1 s) and before retry-after ended: nothing.
    assert not [r for r in fake.requests if first_limit + 0.2 < r["time"] < first_limit + 0.55]


def test_client_processes_share_one_run(tmp_path):
    """Two client processes: every request answered once, counts and the cost cap over both, one clean journal."""
    behaviour = Behaviour(latency_s=0.02, fail_share=0.3, fail_status=500, malformed_share=0.1, pairs_per_answer=12)
    with FakeOpenAI(behaviour) as url:
        stats = distill(config(tmp_path, url, requests=30, processes=2))
        entries = journal_lines(tmp_path / "journal.jsonl")  # a line torn or glued by two writers would not parse
        assert sorted(e["request_id"] for e in entries) == sorted(s.request_id for s in plan(config(tmp_path, url, requests=30)))
        assert stats.ok == 30 and stats.retries > 0 and stats.pairs == 360 and stats.skipped == 0
        resumed = distill(config(tmp_path, url, requests=30, processes=2))
    assert resumed.skipped == 30 and resumed.ok == 0

    with FakeOpenAI(Behaviour(latency_s=0.05)) as url:  # about $0.01 an answer at $20 per million completion tokens
        capped = distill(config(tmp_path, url, out=tmp_path / "cost.jsonl", requests=60, processes=2, price_out_per_m=20.0, max_cost=0.1))
    assert capped.stopped and "--max-cost" in capped.stopped
    assert 8 <= capped.ok == len(journal_lines(tmp_path / "cost.jsonl")) <= 20, "the cost cap must count both processes' answers"


def test_api_key_is_written_nowhere(tmp_path):
    with FakeOpenAI(Behaviour(fail_share=1.0, fail_status=500, fail_times=10)) as url:
        distill(config(tmp_path, url, requests=2, max_attempts=2))
    with FakeOpenAI() as url:
        distill(config(tmp_path, url, requests=2))
    build([tmp_path / "journal.jsonl"], BuildOptions(name="d", dataset_dir=tmp_path, test_size=0))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_build_reads_the_journal_with_provenance(tmp_path):
    with FakeOpenAI(Behaviour(fail_share=0.25, fail_status=500, fail_times=10)) as url:
        distill(config(tmp_path, url, requests=8, max_attempts=2))
    report = build([tmp_path / "journal.jsonl"], BuildOptions(name="d", dataset_dir=tmp_path, test_size=0))
    failed = sum(1 for e in journal_lines(tmp_path / "journal.jsonl") if e["status"] == "failed")
    assert failed >= 1
    assert report["rows_in"] == report["kept"] + report["duplicates"] + report["rejected"]
    assert report["rejected_by_reason"].get("distill_failed") == failed
    # The fake teacher repeats its question pattern, so near-dedup merges many: every pair is still accounted for.
    assert report["kept"] + report["duplicates"] == (8 - failed) * 4 and report["by_origin"] == {"distilled": report["kept"]}
    rejected = [json.loads(x) for x in (tmp_path / "data" / "d_rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(r["provenance"]["teacher"] == "teacher-x" and r["provenance"]["request_id"] for r in rejected)


@pytest.mark.slow
def test_against_llamafactory_api_serving_the_tiny_model(tmp_path, merged_model):
    """A real peer: the distiller runs end to end; gibberish answers are journalled, not a crash."""
    port = free_port()
    chat_yaml = tmp_path / "api.yaml"
    chat_yaml.write_text(f"model_name_or_path: {merged_model}\ntemplate: llama3\ninfer_backend: huggingface\n"
                         "trust_remote_code: false\n", encoding="utf-8")
    env = {**tool_env(), "API_PORT": str(port), "API_HOST": "127.0.0.1"}
    server = subprocess.Popen(["llamafactory-cli", "api", str(chat_yaml)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", server)
        result = subprocess.run([sys.executable, "-m", "prep.cli", "distill", "--out", str(tmp_path / "j.jsonl"), "--base-url",
                                 f"http://127.0.0.1:{port}/v1", "--model", "tiny", "--requests", "3", "--max-tokens", "32"],
                                env=tool_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    entries = journal_lines(tmp_path / "j.jsonl")
    assert len(entries) == 3 and {e["status"] for e in entries} <= {"ok", "truncated", "parse_error"}
    assert all(e["usage"]["completion_tokens"] for e in entries)


def test_batch_api_joins_answers_into_the_journal_and_retries_failed_lines(tmp_path):
    fake = FakeOpenAI(Behaviour(fail_share=0.25, batch_delay_s=0.3))
    with fake as url:
        first = distill(config(tmp_path, url, batch=True, poll_s=0.1))
        entries = journal_lines(tmp_path / "journal.jsonl")
        failed = [e for e in entries if e["status"] == "failed"]
        assert len(fake.batches) == 1 and first.ok == 24 - len(failed) and 1 <= len(failed) < 24
        assert all("HTTP 500" in e["error"] for e in failed)
        uploaded = [json.loads(line) for line in fake.files["file-1"]["content"].decode("utf-8").splitlines()]
        assert sorted(line["custom_id"] for line in uploaded) == sorted(s.request_id for s in plan(config(tmp_path, url)))
        second = distill(config(tmp_path, url, batch=True, poll_s=0.1))
    assert len(fake.batches) == 2 and fake.batches["batch_2"]["request_counts"]["total"] == len(failed)
    assert second.ok == len(failed) and second.skipped == 24 - len(failed)
    latest = read_journal(tmp_path / "journal.jsonl")
    assert len(latest) == 24 and all(e["status"] == "ok" and e["batch_id"] and len(e["pairs"]) == 4 for e in latest.values())
    assert first.cost(config(tmp_path, url, batch=True)) == pytest.approx(first.cost(config(tmp_path, url)) / 2)
    for path in tmp_path.rglob("*"):
        assert SECRET.encode() not in path.read_bytes(), path
    # prep build of the folder reads the journal, not the uploaded requests and the batches' state kept beside it
    from prep.readers import supported_files

    assert len(list(tmp_path.glob("*.jsonl"))) >= 3 and [p.name for p in supported_files(tmp_path)] == ["journal.jsonl"]


def test_batch_api_expired_lines_are_failed_and_a_live_run_finishes_them(tmp_path):
    with FakeOpenAI(Behaviour(batch_expire_share=0.3)) as url:
        distill(config(tmp_path, url, batch=True, poll_s=0.05))
        expired = [e for e in journal_lines(tmp_path / "journal.jsonl") if e["status"] == "failed"]
        assert expired and all("batch expired" in e["error"] for e in expired)
        live = distill(config(tmp_path, url))
    assert live.ok == len(expired) and all(e["status"] == "ok" for e in read_journal(tmp_path / "journal.jsonl").values())


def test_batch_api_resume_after_sigkill_polls_the_same_batch(tmp_path):
    journal = tmp_path / "journal.jsonl"
    fake = FakeOpenAI(Behaviour(batch_delay_s=4))
    with fake as url:
        command = [sys.executable, "-m", "prep.cli", "distill", "--out", str(journal), "--base-url", url, "--model", "teacher-x",
                   "--requests", "10", "--pairs-per-request", "3", "--batch", "--poll-interval", "0.2"]
        process = subprocess.Popen(command, env=tool_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = tmp_path / "journal.jsonl.batches.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and "batch_id" not in (state.read_text(encoding="utf-8") if state.exists() else ""):
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert len(fake.batches) == 1 and not read_journal(journal)
        # A live run leaves the requests the open batch holds (they are paid for); a batch run with other flags
        # refuses to join it (it would drop its answers).
        live = subprocess.run([c for c in command if c not in ("--batch", "--poll-interval", "0.2")], env=tool_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert live.returncode == 0 and not fake.requests and "10 requests of the plan wait in a batch" in live.stderr, live.stderr
        other = subprocess.run([c if c != "teacher-x" else "teacher-y" for c in command], env=tool_env(), cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert other.returncode == 2 and "was submitted for another plan" in other.stderr and "Traceback" not in other.stderr
        result = subprocess.run(command, env=tool_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(fake.batches) == 1, "the resumed run submitted (and would pay for) a second batch"
    entries = journal_lines(journal)
    assert len(entries) == 10 and {e["status"] for e in entries} == {"ok"} and {e["batch_id"] for e in entries} == {"batch_1"}
    assert "10 ok" in result.stdout


def test_batch_api_refused_by_the_endpoint_is_one_sentence(tmp_path):
    """Servers without the Batch API (vLLM, llamafactory-cli api) answer 404: say so, keep nothing half-done."""
    with FakeOpenAI() as url:
        command = [sys.executable, "-m", "prep.cli", "distill", "--out", str(tmp_path / "j.jsonl"), "--base-url",
                   url.replace("/v1", "/nobatch"), "--batch", "--requests", "2"]
        result = subprocess.run(command, env=tool_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "does not offer the Batch API" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "j.jsonl.batches.jsonl").exists()


@pytest.mark.parametrize("options, message", [
    (["--processes", "0"], "--processes 0: expected 1 or more."),
    (["--processes", "2", "--batch"], "--processes applies to live requests"),
])
def test_bad_process_options_are_one_sentence(tmp_path, options, message):
    command = [sys.executable, "-m", "prep.cli", "distill", "--out", str(tmp_path / "j.jsonl"), "--requests", "2", *options]
    result = subprocess.run(command, env=tool_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "j.jsonl").exists()


@pytest.mark.parametrize("options, env, message", [
    (["--base-url", "notaurl"], {}, "--base-url notaurl: expected an http(s) URL"),
    ([], {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}, "OPENAI_API_KEY is not set and api.openai.com needs one"),
])
def test_an_endpoint_that_cannot_answer_is_refused_before_any_request(tmp_path, options, env, message):
    """Both were retried for ~25 s and ended as connection errors (a new user's walkthrough)."""
    command = [sys.executable, "-m", "prep.cli", "distill", "--out", str(tmp_path / "j.jsonl"), "--requests", "1", *options]
    result = subprocess.run(command, env={**tool_env(), **env}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "j.jsonl").exists()


def test_a_journal_the_disk_refuses_stops_the_run_with_one_sentence(tmp_path, monkeypatch):
    """A full disk (write) or a failing fsync ends the run with a PrepError naming the journal; lines written stay."""
    import errno

    def refuse(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = JournalWriter(tmp_path / "j.jsonl")
    writer.write({"request_id": "kept"})
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", refuse)
        with pytest.raises(PrepError, match=r"cannot write the journal .*j\.jsonl \(No space left on device\)"):
            writer.write({"request_id": "lost"})
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", refuse)
        writer.write({"request_id": "written, then not synced"})
        deadline = time.time() + 5
        while writer._sync_error is None and time.time() < deadline:
            time.sleep(0.01)
        with pytest.raises(PrepError, match="No space left on device"):
            writer.write({"request_id": "refused"})
        with pytest.raises(PrepError):
            writer.close()
    assert [e["request_id"] for e in journal_lines(tmp_path / "j.jsonl")] == ["kept", "written, then not synced"]


def test_one_run_per_journal_and_resumes_that_repeat_nothing_and_respect_the_cost_cap(tmp_path):
    """A second run on a journal in use is refused (it sent and paid for every request again); an answer with
    U+2028 counts as done on a re-run (the journal was split at it); --max-cost counts what earlier runs spent."""
    from prep.distill import _only_run

    with FakeOpenAI(Behaviour()) as url, _only_run(tmp_path / "journal.jsonl"):
        with pytest.raises(PrepError, match="another prep distill is writing this journal"):
            distill(config(tmp_path, url))

    odd = lambda messages: "<s>Human: 我最近\u2028睡不好\n</s><s>Assistant: 先说说\u2029最近的作息吧\u0085。\n</s>"  # noqa: E731
    server = FakeOpenAI(Behaviour(responder=odd))
    with server as url:
        distill(config(tmp_path, url, requests=3))
        again = distill(config(tmp_path, url, requests=3))
    assert len(server.requests) == 3 and again.skipped == 3 and len(journal_lines(tmp_path / "journal.jsonl")) == 3

    capped = dict(out=tmp_path / "capped.jsonl", requests=40, concurrency=1, price_in_per_m=20.0, price_out_per_m=20.0, max_cost=0.05)
    server = FakeOpenAI(Behaviour())
    with server as url:
        first = distill(config(tmp_path, url, **capped))
        sent = len(server.requests)
        second = distill(config(tmp_path, url, **capped))
    assert first.stopped and 0 < sent < 40
    assert second.stopped and "earlier runs on this journal included" in second.stopped and len(server.requests) == sent


def test_inputs_and_options_that_cannot_work_are_one_sentence(tmp_path):
    topics = (ROOT / "data" / "topics" / "topics.yaml").read_text(encoding="utf-8")
    (tmp_path / "gbk.yaml").write_bytes(topics.encode("gbk"))  # saved by a Chinese Windows editor
    assert plan(config(tmp_path, "http://127.0.0.1:9/v1", topics=tmp_path / "gbk.yaml")) == plan(config(tmp_path, "http://127.0.0.1:9/v1"))
    (tmp_path / "no_personas.yaml").write_text("areas: [学业]\nconcerns: [焦虑]\n", encoding="utf-8")
    for changes, message in ((dict(topics=tmp_path), "is a folder"), (dict(out=tmp_path), "is a folder"),
                             (dict(max_attempts=0), "--max-attempts 0"), (dict(timeout_s=0), "--timeout 0"),
                             (dict(max_cost=-1.0), "--max-cost -1.0: expected an amount"),
                             (dict(topics=tmp_path / "no_personas.yaml"), "expected non-empty lists")):
        with pytest.raises(PrepError, match=message):
            distill(config(tmp_path, "http://127.0.0.1:9/v1", **{"out": tmp_path / "new" / "j.jsonl", **changes}))
        assert not (tmp_path / "new").exists()  # refused before the journal's folder and lock were made
    # A dataset given as --out by mistake had the run's lines appended to it (and no longer loaded); it is refused untouched.
    for name, content in (("data.json", '[{"instruction": "问", "output": "答"}]\n'), ("chats.jsonl", '{"messages": []}\n')):
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(PrepError, match="holds something other than a prep distill journal"):
            distill(config(tmp_path, "http://127.0.0.1:9/v1", out=tmp_path / name))
        assert (tmp_path / name).read_text(encoding="utf-8") == content
    with FakeOpenAI(Behaviour(fail_share=1.0, fail_status=400)) as url:  # a request the endpoint always refuses
        result = subprocess.run([sys.executable, "-m", "prep.cli", "distill", "--out", str(tmp_path / "j.jsonl"), "--base-url", url,
                                 "--requests", "2"], capture_output=True, text=True, timeout=120, env={**os.environ, "OPENAI_API_KEY": SECRET})
    assert result.returncode == 3 and "every request failed (HTTP 400" in result.stderr and "Traceback" not in result.stderr
    # A refused connection was reported as "Request timed out." alone (the aiohttp transport's word for it)
    result = subprocess.run([sys.executable, "-m", "prep.cli", "distill", "--out", str(tmp_path / "r.jsonl"), "--base-url",
                             "http://127.0.0.1:9/v1", "--requests", "1", "--max-attempts", "1"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OPENAI_API_KEY": SECRET})
    assert result.returncode == 3 and "ConnectionRefusedError" in result.stderr, result.stderr


def test_an_upload_that_never_became_a_batch_holds_nothing_back(tmp_path):
    """A batch run stopped between upload and submit (or by an endpoint without the Batch API) left an upload with
    no batch id; live runs then skipped its requests for good."""
    specs = plan(config(tmp_path, "http://127.0.0.1:9/v1", requests=4))
    state = tmp_path / "journal.jsonl.batches.jsonl"
    state.write_text(json.dumps({"input_file_id": "file-1", "request_ids": [s.request_id for s in specs]}) + "\n", encoding="utf-8")
    server = FakeOpenAI(Behaviour())
    with server as url:
        stats = distill(config(tmp_path, url, requests=4))
    assert stats.ok == 4 and len(server.requests) == 4


def test_the_cost_cap_prices_answers_collected_from_a_batch_at_the_batch_price(tmp_path):
    """Answers collected from a batch were counted at the live price against a later run's --max-cost."""
    from prep.distill import journal_cost

    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}
    journal = tmp_path / "journal.jsonl"
    journal.write_text(json.dumps({"request_id": "a", "status": "ok", "usage": usage}) + "\n"
                       + json.dumps({"request_id": "b", "status": "ok", "usage": usage, "batch_id": "batch_1"}) + "\n", encoding="utf-8")
    prices = config(tmp_path, "http://127.0.0.1:9/v1", price_in_per_m=2.0, price_out_per_m=8.0, batch_discount=0.5)
    assert journal_cost(journal, prices) == pytest.approx(10.0 + 5.0)
