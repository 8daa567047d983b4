"""chat.py's decode loop: the same tokens as transformers' ``generate``, streamed without splitting characters."""

from __future__ import annotations

import pytest

MESSAGE = "我最近总是失眠，白天也没精神，怎么办？"


def reference_tokens(session, message: str, **sampling) -> list[int]:
    """What ``model.generate`` produces for the same prompt and settings."""
    ids = session._prompt_ids(message)
    out = session.model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=session.options.max_new_tokens,
                                 repetition_penalty=session.options.repetition_penalty, eos_token_id=session.stop_ids,
                                 pad_token_id=session.tokenizer.pad_token_id, **sampling)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_reply_is_token_for_token_what_generate_gives(tiny_model, penalty):
    from prep.chat import ChatSession, GenerationOptions

    session = ChatSession(tiny_model, options=GenerationOptions(temperature=0, max_new_tokens=40, repetition_penalty=penalty))
    expected = reference_tokens(session, MESSAGE, do_sample=False)
    pieces = list(session.stream(MESSAGE))
    reply = session.last_reply
    assert reply.tokens == len(expected)
    assert reply.text == session.tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert "".join(pieces).strip() == reply.text
    assert len(pieces) > 1  # streamed, not one block at the end


def test_sampled_reply_is_what_generate_samples_with_the_same_seed(tiny_model):
    import torch

    from prep.chat import ChatSession, GenerationOptions

    options = GenerationOptions(temperature=0.9, top_p=0.8, max_new_tokens=32, repetition_penalty=1.1)
    session = ChatSession(tiny_model, options=options)
    torch.manual_seed(7)
    expected = reference_tokens(session, MESSAGE, do_sample=True, temperature=0.9, top_p=0.8)
    torch.manual_seed(7)
    reply = session.ask(MESSAGE)
    assert reply.text == session.tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_streamed_pieces_never_split_a_character(tiny_model):
    from prep.chat import IncrementalDecoder, ChatSession

    tokenizer = ChatSession(tiny_model).tokenizer
    text = "我们慢慢来，深呼吸。🙂 你并不孤单——希望24热线 400-161-9995。\n\n先睡一觉吧。"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 10


def chat_past_the_window(tiny_model, monkeypatch, trim_to: float, reuse: bool = True):
    """Sixteen turns through a 400-token window: each prompt's length, each reply, and the tokens prefilled."""
    from prep import chat
    from prep.chat import ChatSession, GenerationOptions

    monkeypatch.setattr(chat, "TRIM_TO", trim_to)
    options = GenerationOptions(temperature=0, max_new_tokens=16, repetition_penalty=1.0)
    session = ChatSession(tiny_model, options=options, context_tokens=400, reuse_cache=reuse)
    build_prompt, prompts = session._prompt_ids, []
    session._prompt_ids = lambda message: prompts.append(build_prompt(message)) or prompts[-1]
    replies = [session.ask(f"第{turn}个问题：{MESSAGE}") for turn in range(16)]
    newest_kept = all(f"第{turn - 1}个问题" in session.tokenizer.decode(prompt[0])
                      for turn, prompt in enumerate(prompts) if turn)
    return [p.shape[1] for p in prompts], replies, newest_kept


def test_a_full_window_is_trimmed_in_one_step_so_the_next_turns_reuse_the_cache(tiny_model, monkeypatch):
    """Past the budget the oldest exchanges go until the history fills 3/4 of its room; dropping just enough each
    turn (TRIM_TO = 1) would shift the window every turn and re-prefill all of it. Either way every prompt fits, keeps
    the newest exchange, and the replies are those of a session that reuses no cache."""
    from prep.chat import TRIM_TO

    budget = 400 - 16
    lengths, replies, newest_kept = chat_past_the_window(tiny_model, monkeypatch, TRIM_TO)
    step_lengths, step_replies, step_newest_kept = chat_past_the_window(tiny_model, monkeypatch, 1.0)
    assert max(lengths) <= budget and max(step_lengths) <= budget and newest_kept and step_newest_kept
    assert max(lengths) > 0.9 * budget  # the window did fill
    full = [turn for turn, r in enumerate(replies) if r.prefill_tokens > budget / 2]  # turns that re-prefilled all
    step_full = [turn for turn, r in enumerate(step_replies) if r.prefill_tokens > budget / 2]
    back_to_back = lambda turns: sum(later - earlier == 1 for earlier, later in zip(turns, turns[1:]))
    assert len(step_full) >= 5 and back_to_back(step_full) >= 3, step_full  # turn after turn once the window is full
    assert back_to_back(full) == 0, full  # each trim buys at least one turn that reuses the cache
    assert sum(r.prefill_tokens for r in replies) < 0.7 * sum(r.prefill_tokens for r in step_replies)
    _, uncached, _ = chat_past_the_window(tiny_model, monkeypatch, TRIM_TO, reuse=False)
    assert [r.text for r in replies] == [r.text for r in uncached]


def test_context_budget_never_exceeds_the_models_window(tiny_model):
    from prep.chat import ChatSession

    session = ChatSession(tiny_model, context_tokens=100_000)
    assert session.context_tokens == session.model.config.max_position_embeddings == 2048
    assert ChatSession(tiny_model, context_tokens=1000).context_tokens == 1000


def test_history_replaced_after_a_trim_is_used_whole(tiny_model):
    """The web chat hands the session each tab's own history: a trim point left by another, longer conversation
    must not hide the new one."""
    from prep.chat import ChatSession, GenerationOptions

    session = ChatSession(tiny_model, options=GenerationOptions(temperature=0, max_new_tokens=16), context_tokens=300)
    session.history = [m for i in range(12) for m in ({"role": "user", "content": f"旧问题{i}"},
                                                      {"role": "assistant", "content": f"旧回答{i}"})]
    assert "旧问题0" not in session.tokenizer.decode(session._prompt_ids("新问题")[0])  # trimmed
    session.history = [{"role": "user", "content": "新对话的第一个问题"}, {"role": "assistant", "content": "新对话的回答"}]
    prompt = session.tokenizer.decode(session._prompt_ids("新问题")[0])
    assert "新对话的第一个问题" in prompt and "新对话的回答" in prompt


def test_more_new_tokens_than_the_context_is_one_clear_error(tiny_model):
    from prep.chat import ChatSession, GenerationOptions
    from prep.errors import PrepError

    with pytest.raises(PrepError, match="--max-new-tokens 3000 leaves no room for the prompt: the context is 2048 tokens"):
        ChatSession(tiny_model, options=GenerationOptions(max_new_tokens=3000))


def in_worker_thread(function, *args):
    """function(*args) run in a new thread, its result returned (exceptions re-raised here)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result()


def test_compiled_session_answers_like_the_eager_one_and_compiles_only_at_load(tiny_model):
    """--compile: replies equal the eager session's over messages of many lengths (padded to shared shapes, or eager
    past the largest), a trim and /reset; every shape was compiled at load, none on a message, and the compiled
    forward only ever sees the few shapes a GPU records a CUDA graph for. A message asked from another thread (the
    web chat's Gradio worker) compiles nothing either: on a GPU, recording a CUDA graph there would fail."""
    from torch._dynamo.utils import counters

    from prep.chat import PREFILL_BUCKETS, ChatSession, GenerationOptions

    options = GenerationOptions(temperature=0, max_new_tokens=16, repetition_penalty=1.2)
    compiled = ChatSession(tiny_model, options=options, context_tokens=400, compile=True)
    graphs, shapes, forward = counters["stats"]["unique_graphs"], [], compiled._compiled
    compiled._compiled = lambda **inputs: shapes.append(inputs["input_ids"].shape[1]) or forward(**inputs)
    eager = ChatSession(tiny_model, options=options, context_tokens=400)
    longest = "好的。" + MESSAGE
    while len(eager.tokenizer(longest, add_special_tokens=False)["input_ids"]) <= PREFILL_BUCKETS[-2] + 8:
        longest += MESSAGE  # past the largest shape this budget compiles (the tokenizer is trained on the seed data)
    messages = [f"第{turn}个问题：" + MESSAGE * (1 + turn % 4) for turn in range(10)] + [longest]
    replies = [(in_worker_thread(compiled.ask, messages[0]), eager.ask(messages[0]))]  # as the web chat asks
    replies += [(compiled.ask(m), eager.ask(m)) for m in messages[1:]]
    assert compiled._dropped  # the window filled and was trimmed
    compiled.reset(), eager.reset()
    replies.append((compiled.ask(MESSAGE), eager.ask(MESSAGE)))
    assert [ours.text for ours, _ in replies] == [theirs.text for _, theirs in replies]
    assert [ours.prefill_tokens for ours, _ in replies] == [theirs.prefill_tokens for _, theirs in replies]
    assert max(ours.prefill_tokens for ours, _ in replies) > PREFILL_BUCKETS[-2]  # past the largest compiled shape
    assert counters["stats"]["unique_graphs"] == graphs
    assert set(shapes) <= {1, *PREFILL_BUCKETS} and len(set(shapes)) >= 3, sorted(set(shapes))


def test_compile_needs_a_merged_unquantised_model(tiny_model):
    from prep.chat import ChatSession
    from prep.errors import PrepError

    with pytest.raises(PrepError, match="--compile needs a merged model"):
        ChatSession(tiny_model, adapter_dir=tiny_model, compile=True)


def test_a_failed_compilation_is_one_clear_error(tiny_model, monkeypatch):
    """torch.compile fails at the first call of the compiled forward (here: a machine without a C compiler, whose
    error is simulated); chat.py says so in one sentence and names the way out."""
    import torch

    from prep.chat import ChatSession
    from prep.errors import PrepError

    def compile_without_a_compiler(forward, **settings):
        def compiled(**inputs):
            raise RuntimeError("InductorError: no working C compiler found\n(a long traceback of the compiler)")
        return compiled

    monkeypatch.setattr(torch, "compile", compile_without_a_compiler)
    with pytest.raises(PrepError) as failure:
        ChatSession(tiny_model, compile=True)
    assert str(failure.value) == (f"--compile failed while compiling {tiny_model} (InductorError: no working C compiler "
                                  "found); run without --compile.")


def test_grouped_attention_gives_transformers_sdpa_logits_over_a_static_cache(tiny_model):
    """--compile's attention (query heads stacked per key/value head, no copy of the keys and values) computes what
    transformers' SDPA does: a prompt, then a chunk and a decode step on top of it, over a masked static cache."""
    import torch
    from transformers import AutoModelForCausalLM, StaticCache

    from prep.chat import use_grouped_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped-query attention
    ids = torch.randint(0, model.config.vocab_size, (1, 28), generator=torch.Generator().manual_seed(0))
    logits = {}
    for implementation in ("sdpa", "grouped_sdpa"):
        if implementation == "sdpa":
            model.set_attn_implementation("sdpa")
        else:
            use_grouped_attention(model)
        cache = StaticCache(config=model.config, max_cache_len=64)
        with torch.no_grad():
            logits[implementation] = torch.cat([model(input_ids=chunk, past_key_values=cache, use_cache=True).logits
                                                for chunk in (ids[:, :20], ids[:, 20:27], ids[:, 27:])], dim=1)
    assert torch.allclose(logits["sdpa"], logits["grouped_sdpa"], atol=1e-5)


def test_compiled_session_answers_a_message_longer_than_its_budget(tiny_model):
    """A message too long for the budget on its own is answered as the eager session answers it (on a dynamic cache:
    the static one has no room for it and its reply), and the next message is back on the compiled path."""
    from prep.chat import ChatSession, GenerationOptions

    options = GenerationOptions(temperature=0, max_new_tokens=40, repetition_penalty=1.0)
    compiled = ChatSession(tiny_model, options=options, context_tokens=200, compile=True)
    eager = ChatSession(tiny_model, options=options, context_tokens=200)
    calls, forward = [], compiled._compiled
    compiled._compiled = lambda **inputs: calls.append(1) or forward(**inputs)
    long_message, short_message = MESSAGE * 12, MESSAGE
    assert compiled._prompt_ids(long_message).shape[1] + 40 > 200  # it does not fit
    assert compiled.ask(long_message).text == eager.ask(long_message).text
    assert not calls
    assert compiled.ask(short_message).text == eager.ask(short_message).text
    assert calls


def test_a_message_longer_than_the_context_is_declined_with_the_guard_and_the_history_kept(tiny_model):
    """It was fed to the model whole, past the window the model was built for; a reply was not capped to the room
    the context leaves either. Now the user is told, a crisis still gets the referral, and the conversation goes on."""
    from prep.chat import ChatSession, GenerationOptions

    session = ChatSession(tiny_model, options=GenerationOptions(temperature=0, max_new_tokens=16), context_tokens=200)
    first = session.ask("我最近总是失眠")
    history = list(session.history)
    declined = session.ask("我不想活了。" + MESSAGE * 30)
    assert declined.text.startswith("（这条消息太长了") and declined.tokens == 0
    assert declined.referral_added and "12356" in declined.text and session.history == history
    assert "我最近总是失眠" in session.tokenizer.decode(session._prompt_ids("还在吗")[0]) and first.tokens > 0
    near_full = MESSAGE * 4
    while session._prompt_ids(near_full).shape[1] < 195:
        near_full += "好"
    assert session.ask(near_full).tokens <= 200 - session._prompt_ids(near_full).shape[1]


def test_top_p_zero_means_greedy_only_with_temperature_zero():
    """--temperature 0 --top-p 0 is how many people write 'greedy' (top-p plays no part then); with sampling it is
    still refused, since it would leave no token to sample from."""
    from prep.chat import GenerationOptions
    from prep.errors import PrepError

    assert GenerationOptions(temperature=0, top_p=0).top_p == 0
    with pytest.raises(PrepError, match="--top-p 0: expected more than 0"):
        GenerationOptions(temperature=0.7, top_p=0)
