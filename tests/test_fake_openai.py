"""The fake OpenAI server, exercised with the real `openai` AsyncOpenAI client."""

from __future__ import annotations

import asyncio
import re

import httpx
import openai
import pytest

from fake_openai import Behaviour, FakeOpenAI, prompt_hash, selected

PAIR = re.compile(r"<s>Human: (.+?)\n</s><s>Assistant: (.+?)\n</s>")


def ask(url: str, prompt: str, key: str = "sk-test", timeout: float = 10.0, **kwargs):
    async def go():
        async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=timeout) as client:
            return await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": prompt}], **kwargs)
    return asyncio.run(go())


def prompts(k: int) -> list[str]:
    return [f"请生成2个关于主题{i}的心理咨询问答" for i in range(k)]


def test_normal_answer_parses_into_n_pairs():
    with FakeOpenAI() as url:
        reply = ask(url, "请生成4个心理咨询问答")
        default = ask(url, "请给我一些问答")
    assert reply.model == "gpt-test" and reply.object == "chat.completion"
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    pairs = PAIR.findall(choice.message.content)
    assert len(pairs) == 4 and len({q for q, _ in pairs} | {a for _, a in pairs}) == 8
    assert all(f"第{i}个" in q and f"第{i}个" in a for i, (q, a) in enumerate(pairs, 1))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0
    assert len(PAIR.findall(default.choices[0].message.content)) == 3
    with FakeOpenAI(Behaviour(pairs_per_answer=1)) as url:
        assert ask(url, "请生成5个问答").choices[0].message.content.count("<s>Human:") == 1


def test_multi_turn_items_are_two_exchange_conversations():
    with FakeOpenAI() as url:
        text = ask(url, "请生成2个多轮对话").choices[0].message.content
    items = text.split("\n###\n")
    assert len(items) == 2 and all(len(PAIR.findall(item)) == 2 for item in items)


def test_rate_limit_with_retry_after_then_success():
    fake = FakeOpenAI(Behaviour(fail_share=1.0, fail_status=429, retry_after_s=2, fail_times=2))
    with fake as url:
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as caught:
                ask(url, "请生成2个问答")
            assert caught.value.response.headers["retry-after"] == "2"
        assert len(PAIR.findall(ask(url, "请生成2个问答").choices[0].message.content)) == 2
    assert [(r["attempt"], r["status"]) for r in fake.requests] == [(1, 429), (2, 429), (3, 200)]
    assert fake.requests[0]["headers"]["authorization"] == "Bearer sk-test"
    assert fake.requests[0]["body"]["model"] == "gpt-test"


def test_server_error_status():
    with FakeOpenAI(Behaviour(fail_share=1.0, fail_status=500)) as url:
        with pytest.raises(openai.InternalServerError):
            ask(url, "请生成2个问答")


def test_api_key_required():
    with FakeOpenAI(Behaviour(api_key="sk-right")) as url:
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(url, "请生成2个问答", key="sk-wrong")
        assert caught.value.status_code == 401
        assert ask(url, "请生成2个问答", key="sk-right").choices[0].finish_reason == "stop"


def test_insufficient_quota():
    with FakeOpenAI(Behaviour(quota_exhausted=True)) as url:
        with pytest.raises(openai.RateLimitError) as caught:
            ask(url, "请生成2个问答")
    assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"


def test_malformed_body_raises_then_recovers():
    with FakeOpenAI(Behaviour(malformed_share=1.0)) as url:
        # openai 1.x/2.x does not wrap a broken JSON body: it surfaces json.JSONDecodeError (a ValueError)
        with pytest.raises((openai.APIError, ValueError)):
            ask(url, "请生成2个问答")
        assert ask(url, "请生成2个问答").choices[0].finish_reason == "stop"


def test_timeout_then_success():
    fake = FakeOpenAI(Behaviour(timeout_share=1.0, timeout_sleep_s=5))
    with fake as url:
        with pytest.raises(openai.APITimeoutError):
            ask(url, "请生成2个问答", timeout=0.3)
        assert ask(url, "请生成2个问答", timeout=2).choices[0].finish_reason == "stop"
    assert [(r["attempt"], r["fault"]) for r in fake.requests] == [(1, "timeout"), (2, None)]


def test_length_and_refusal():
    with FakeOpenAI(Behaviour(length_share=1.0)) as url:
        cut = ask(url, "请生成3个问答").choices[0]
    assert cut.finish_reason == "length" and len(PAIR.findall(cut.message.content)) == 2
    assert cut.message.content.count("<s>Human:") == 3 and not cut.message.content.endswith("</s>")
    with FakeOpenAI(Behaviour(refusal_share=1.0)) as url:
        refused = ask(url, "请生成3个问答").choices[0]
    assert refused.finish_reason == "stop" and "<s>Human:" not in refused.message.content


def test_selection_is_deterministic_and_salted():
    behaviour = Behaviour(fail_share=0.5, malformed_share=0.5)
    runs = []
    for _ in range(2):
        fake = FakeOpenAI(behaviour)
        with fake as url:
            for p in prompts(20):
                try:
                    ask(url, p)
                except (openai.APIError, ValueError):
                    pass
        runs.append([(r["prompt_hash"], r["status"]) for r in fake.requests])
    assert runs[0] == runs[1] and 0 < sum(s == 500 for _, s in runs[0]) < 20
    messages = [[{"role": "user", "content": p}] for p in prompts(200)]
    fails = {i for i, m in enumerate(messages) if selected(m, "fail", 0.5)}
    malformed = {i for i, m in enumerate(messages) if selected(m, "malformed", 0.5)}
    assert 60 < len(fails) < 140 and fails != malformed
    assert prompt_hash(messages[0]) == fake.requests[0]["prompt_hash"]


def test_models_and_bad_request():
    with FakeOpenAI() as url:
        models = httpx.get(f"{url}/models", trust_env=False).json()
        bad = httpx.post(f"{url}/chat/completions", content=b"nope", trust_env=False)
    assert len(models["data"]) == 1
    assert bad.status_code == 400 and set(bad.json()["error"]) >= {"message", "type", "code"}
