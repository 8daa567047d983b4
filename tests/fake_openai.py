"""A scriptable OpenAI-compatible HTTP server for testing the distillation client.

``FakeOpenAI(Behaviour(...))`` serves ``POST /v1/chat/completions`` and ``GET /v1/models``
on 127.0.0.1 (random free port) from a background uvicorn thread::

    with FakeOpenAI(Behaviour(fail_share=0.3, fail_status=429, retry_after_s=1)) as base_url:
        client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)

A normal answer is an intro line, N ``<s>Human: q\\n</s><s>Assistant: a\\n</s>`` pairs
(N from ``pairs_per_answer`` or ``生成(\\d+)个`` in the prompt, default 3) and an outro line;
prompts containing ``多轮`` get N two-exchange conversations separated by ``###`` lines.

Share-based behaviours pick prompts deterministically: sha256(salt + messages JSON with
sort_keys) mapped to [0, 1) and compared with the share, one salt per behaviour.  Transient
faults of a selected prompt are served in order, one per attempt: ``fail_times`` failures,
then a timeout (slow answer), then a malformed body; later attempts get a real answer
(``length``/``refusal`` apply to every attempt, ``length`` winning).  ``api_key`` (401) and
``quota_exhausted`` (429 insufficient_quota) apply to every request.  Every chat request,
including rejected ones, is recorded in ``requests`` and counts as an attempt; entries also
carry ``fault`` ("fail", "timeout", "malformed" or None).

The Batch API is served too (``POST /v1/files``, ``GET /v1/files/{id}/content``,
``POST``/``GET /v1/batches``): a batch stays ``in_progress`` for ``batch_delay_s``, then
answers every line with the same completions, ``fail_share`` lines as 500s in the error
file and ``batch_expire_share`` lines not at all (status ``expired``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse, Response

MODEL = "fake-gpt"
TOPICS = ["睡眠", "工作压力", "人际关系", "情绪低落", "考试焦虑", "亲子沟通", "恋爱", "自我认同"]
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 408: "timeout",
               429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}


@dataclass
class Behaviour:
    latency_s: float = 0.0
    pairs_per_answer: int | None = None
    fail_share: float = 0.0
    fail_status: int = 500
    fail_times: int = 1
    retry_after_s: float | None = None
    timeout_share: float = 0.0
    timeout_sleep_s: float = 30.0
    malformed_share: float = 0.0
    length_share: float = 0.0
    refusal_share: float = 0.0
    quota_exhausted: bool = False
    api_key: str | None = None
    responder: Callable[[list], str] | None = None  # answer text chosen by the test from the messages
    batch_delay_s: float = 0.0  # Batch API: seconds a batch stays in_progress
    batch_expire_share: float = 0.0  # Batch API: lines left unanswered when the batch expires


def prompt_hash(messages: list) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def selected(messages: list, salt: str, share: float) -> bool:
    """Deterministic choice: sha256(salt + messages JSON) as a number in [0, 1) below ``share``."""
    digest = hashlib.sha256((salt + json.dumps(messages, sort_keys=True, ensure_ascii=False)).encode())
    return int.from_bytes(digest.digest()[:8], "big") / 2**64 < share


def error(status: int, message: str, type_: str, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def exchange(h: str, i: int, turn: int = 1) -> str:
    topic = TOPICS[int(h[:8], 16) % len(TOPICS)]
    if turn == 1:
        q = f"我最近在{topic}方面有困扰，第{i}个问题（{h[:6]}）怎么办？"
        a = f"听起来第{i}个问题让你在{topic}上很辛苦，你的感受是可以理解的。我们可以一起慢慢梳理第{i}个问题，先从最近的一件小事说起。"
    else:
        q = f"谢谢，关于第{i}个问题，我还是担心做不好（{h[6:12]}）。"
        a = f"担心做不好说明你很在意第{i}个问题，这份在意很珍贵。你可以先定一个很小的目标，完成后再肯定一下自己。"
    return f"<s>Human: {q}\n</s><s>Assistant: {a}\n</s>"


def answer_text(h: str, n: int, multi_turn: bool) -> str:
    if multi_turn:
        items = "\n###\n".join(exchange(h, i) + exchange(h, i, turn=2) for i in range(1, n + 1))
    else:
        items = "".join(exchange(h, i) for i in range(1, n + 1))
    return f"好的，以下是{n}个心理咨询{'多轮对话' if multi_turn else '问答'}示例：\n{items}\n希望这些示例对你有帮助。"


def cut_last_answer(text: str) -> str:
    """Cut the text in the middle of the last assistant answer (no closing ``</s>``)."""
    start = text.rindex("<s>Assistant: ") + len("<s>Assistant: ")
    end = text.index("\n</s>", start)
    return text[: start + (end - start) // 2]


class FakeOpenAI:
    def __init__(self, behaviour: Behaviour | None = None):
        self.behaviour = behaviour or Behaviour()
        self.requests: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.base_url: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = FastAPI()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.app.post("/v1/chat/completions")(self._chat)
        self.app.get("/v1/models")(self._models)
        self.app.post("/v1/files")(self._upload)
        self.app.get("/v1/files/{file_id}/content")(self._file_content)
        self.app.post("/v1/batches")(self._create_batch)
        self.app.get("/v1/batches")(self._list_batches)
        self.app.get("/v1/batches/{batch_id}")(self._get_batch)

    async def _models(self) -> dict:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "fake"}]}

    async def _chat(self, request: Request) -> Response:
        b = self.behaviour
        try:
            body = json.loads(await request.body())
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            return error(400, "request body must be JSON with `messages`", "invalid_request_error")
        h = prompt_hash(messages)
        self.attempts[h] = attempt = self.attempts.get(h, 0) + 1
        entry = {"prompt_hash": h, "attempt": attempt, "status": 200, "time": time.time(),
                 "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}
        self.requests.append(entry)

        faults = ["fail"] * b.fail_times * selected(messages, "fail", b.fail_share)
        faults += ["timeout"] * selected(messages, "timeout", b.timeout_share)
        faults += ["malformed"] * selected(messages, "malformed", b.malformed_share)
        fault = faults[attempt - 1] if attempt <= len(faults) else None
        unauthorized = b.api_key is not None and request.headers.get("authorization") != f"Bearer {b.api_key}"
        if unauthorized or b.quota_exhausted:
            fault = None

        if unauthorized:
            response = error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        elif b.quota_exhausted:
            response = error(429, "You exceeded your current quota, please check your plan and billing details.",
                             "insufficient_quota", "insufficient_quota")
        elif fault == "fail":
            headers = {"retry-after": f"{b.retry_after_s:g}"} if b.fail_status == 429 and b.retry_after_s is not None else None
            code = "rate_limit_exceeded" if b.fail_status == 429 else None
            response = error(b.fail_status, f"Injected failure (attempt {attempt}).",
                             ERROR_TYPES.get(b.fail_status, "api_error"), code, headers)
        elif fault == "malformed":
            response = Response('{"id": "chatcmpl-broken", "choices": [{"message": {"content": "<s>Hu',
                                media_type="application/json")
        else:
            response = self._completion(body, messages, h)
        entry.update(status=response.status_code, fault=fault)
        try:
            await asyncio.sleep(b.latency_s + (b.timeout_sleep_s if fault == "timeout" else 0.0))
        except asyncio.CancelledError:  # server stopping while a slow answer is pending: end quietly
            pass
        return response

    def _completion(self, body: dict, messages: list, h: str) -> JSONResponse:
        b = self.behaviour
        prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        found = re.search(r"生成(\d+)个", prompt)
        n = b.pairs_per_answer if b.pairs_per_answer is not None else int(found.group(1)) if found else 3
        text, finish = answer_text(h, n, "多轮" in prompt), "stop"
        if b.responder is not None:
            text = b.responder(messages)
        elif selected(messages, "length", b.length_share):
            text, finish = cut_last_answer(answer_text(h, max(n, 1), "多轮" in prompt)), "length"
        elif selected(messages, "refusal", b.refusal_share):
            text = "抱歉，我无法按照这个要求生成内容。如果你正在经历困难，请联系专业的心理咨询师。"
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(text), "total_tokens": len(prompt) + len(text)}
        if body.get("stream"):
            return self._stream(body, h, text, finish, usage)
        return JSONResponse({
            "id": f"chatcmpl-{h[:12]}-{self.attempts.get(h, 0)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", MODEL), "usage": usage, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish, "logprobs": None}],
        })

    # --- Batch API: files and batches, answered with the same completions as the chat endpoint ---

    async def _upload(self, request: Request) -> dict:
        form = await request.form()
        upload = form["file"]
        content = await upload.read()
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                               "filename": upload.filename, "purpose": form.get("purpose"), "status": "processed",
                               "content": content}
        return {k: v for k, v in self.files[file_id].items() if k != "content"}

    async def _file_content(self, file_id: str) -> Response:
        if file_id not in self.files:
            return error(404, f"No such file: {file_id}", "invalid_request_error")
        return Response(self.files[file_id]["content"], media_type="application/octet-stream")

    def _store(self, name: str, lines: list[dict]) -> str | None:
        if not lines:
            return None
        file_id = f"file-{len(self.files) + 1}"
        content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                               "filename": name, "purpose": "batch_output", "status": "processed", "content": content}
        return file_id

    async def _create_batch(self, request: Request) -> Response:
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return error(400, "input_file_id not found", "invalid_request_error")
        batch_id = f"batch_{len(self.batches) + 1}"
        lines = [json.loads(line) for line in self.files[body["input_file_id"]]["content"].decode("utf-8").splitlines() if line.strip()]
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"), "status": "in_progress", "created_at": int(time.time()),
            "metadata": body.get("metadata"), "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "output_file_id": None, "error_file_id": None, "_lines": lines, "_ready_at": time.time() + self.behaviour.batch_delay_s,
        }
        return JSONResponse(self._batch_view(batch_id))

    def _finish_batch(self, batch: dict) -> None:
        """Answer every line: ok bodies to the output file, injected failures to the error file."""
        b, outputs, errors = self.behaviour, [], []
        for n, line in enumerate(batch.pop("_lines")):
            messages = line["body"]["messages"]
            if selected(messages, "expire", b.batch_expire_share):
                continue
            h = prompt_hash(messages)
            self.attempts[h] = self.attempts.get(h, 0) + 1
            self.requests.append({"prompt_hash": h, "attempt": self.attempts[h], "status": 200, "time": time.time(),
                                  "headers": {}, "body": line["body"], "fault": None, "batch": batch["id"]})
            if self.attempts[h] <= b.fail_times and selected(messages, "fail", b.fail_share):
                err = {"error": {"message": "Injected failure.", "type": "server_error", "param": None, "code": None}}
                errors.append({"id": f"batch_req_{n}", "custom_id": line["custom_id"],
                               "response": {"status_code": 500, "request_id": f"req_{n}", "body": err}, "error": None})
                continue
            answer = json.loads(self._completion(line["body"], messages, h).body)
            outputs.append({"id": f"batch_req_{n}", "custom_id": line["custom_id"],
                            "response": {"status_code": 200, "request_id": f"req_{n}", "body": answer}, "error": None})
        expired = batch["request_counts"]["total"] > len(outputs) + len(errors)
        batch.update(status="expired" if expired else "completed", output_file_id=self._store("output.jsonl", outputs),
                     error_file_id=self._store("errors.jsonl", errors),
                     request_counts={"total": batch["request_counts"]["total"], "completed": len(outputs), "failed": len(errors)})

    def _batch_view(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        if batch["status"] == "in_progress" and time.time() >= batch["_ready_at"]:
            self._finish_batch(batch)
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def _get_batch(self, batch_id: str) -> Response:
        if batch_id not in self.batches:
            return error(404, f"No such batch: {batch_id}", "invalid_request_error")
        return JSONResponse(self._batch_view(batch_id))

    async def _list_batches(self) -> dict:
        data = [self._batch_view(batch_id) for batch_id in reversed(list(self.batches))]
        return {"object": "list", "data": data, "first_id": None, "last_id": None, "has_more": False}

    def _stream(self, body: dict, h: str, text: str, finish: str, usage: dict) -> StreamingResponse:
        """Server-sent events, a few characters per chunk, as OpenAI streams; with stream_options.include_usage a last
        chunk without choices carries the usage (a character is a token here)."""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": f"chatcmpl-{h[:12]}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", MODEL)}

        def events():
            for start in range(0, len(text), 4):
                delta = {"role": "assistant", "content": text[start:start + 4]} if start == 0 else {"content": text[start:start + 4]}
                yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]}, ensure_ascii=False)}\n\n"
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': finish}]})}\n\n"
            if include_usage:
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def start(self) -> str:
        # proto IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on sockets that say they are TCP, and without
        # it every keep-alive answer waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        deadline, no_proxy = time.monotonic() + 10, urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            try:
                with no_proxy.open(f"{self.base_url}/models", timeout=1):
                    return self.base_url
            except OSError:
                if time.monotonic() > deadline or not self._thread.is_alive():
                    raise RuntimeError("fake OpenAI server did not start")
                time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = self._server.force_exit = True
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
