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
