"""Chat latency: chat.py's engine versus LLaMA-Factory's ChatModel, side by side in one run.

Time-to-first-token (TTFT) at turns 1, 5, 10 and 20 of one conversation, and
decode tokens/s against a bare ``model.generate`` loop on the same prompt.
Both engines load the same model folder and see the same history (greedy
decoding; the history replies are the engine's own, which are identical).

    python bench/bench_chat.py [--hidden 512 --layers 8] [--model DIR] [--new-tokens N] [--compile]

Without --model it builds a randomly initialised Llama-3-shaped model (weights
do not change speed); on a CPU-only machine the figures are CPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prep.chat import ChatSession, GenerationOptions  # noqa: E402
from prep.errors import PrepError  # noqa: E402
from prep.prompts import DEFAULT_SYSTEM_PROMPT  # noqa: E402

TURNS = (1, 5, 10, 20)
MESSAGE = "我最近压力很大，晚上总是睡不着，白天也没精神，工作效率很低，不知道该怎么调整自己的状态。"


def ours(model_dir: Path, new_tokens: int, compile: bool = False) -> tuple[dict[int, tuple[float, float]], list[dict], dict]:
    label, start = "chat.py --compile" if compile else "chat.py", time.perf_counter()
    session = ChatSession(model_dir, options=GenerationOptions(temperature=0, max_new_tokens=new_tokens, repetition_penalty=1.0),
                          compile=compile)
    print(f"{label} load: {time.perf_counter() - start:.1f} s", flush=True)
    ttft, rates = {}, {}
    for turn in range(1, max(TURNS) + 1):
        reply = session.ask(f"第{turn}轮：{MESSAGE}")
        if turn in TURNS:
            ttft[turn] = (reply.first_token_s, reply.ttft_s)
        rates[turn] = (reply.tokens_per_s, reply.tokens)
    print(f"{label} decode tokens/s by turn:", {t: round(r, 1) for t, (r, _) in rates.items()}, flush=True)
    return ttft, list(session.history), rates


FIRST_TOKEN_AT: list[float] = []


def time_first_tokens() -> None:
    """Record when LLaMA-Factory's streamer receives its first generated token (its first put is the prompt)."""
    from transformers import TextIteratorStreamer

    put = TextIteratorStreamer.put

    def timed_put(self, value):
        if not self.next_tokens_are_prompt and not getattr(self, "_timed", False):
            self._timed = True
            FIRST_TOKEN_AT.append(time.perf_counter())
        put(self, value)

    TextIteratorStreamer.put = timed_put


def llamafactory(model_dir: Path, history: list[dict], new_tokens: int) -> dict[int, tuple[float, float]]:
    from llamafactory.chat import ChatModel

    time_first_tokens()
    chat_model = ChatModel(dict(model_name_or_path=str(model_dir), template="llama3", infer_backend="huggingface",
                                trust_remote_code=False, do_sample=False, max_new_tokens=new_tokens, repetition_penalty=1.0))
    ttft = {}
    for turn in TURNS:
        messages = history[: 2 * (turn - 1)] + [{"role": "user", "content": f"第{turn}轮：{MESSAGE}"}]
        FIRST_TOKEN_AT.clear()
        start = time.perf_counter()
        stream = chat_model.stream_chat(messages, system=DEFAULT_SYSTEM_PROMPT)
        next(stream)
        visible = time.perf_counter() - start
        for _ in stream:
            pass
        ttft[turn] = (FIRST_TOKEN_AT[0] - start, visible)
    return ttft


def bare_generate(model_dir: Path, history: list[dict], new_tokens: int) -> dict[int, float]:
    """Decode tokens/s of a bare ``model.generate`` on the prompt chat.py saw at each measured turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()  # the device and dtype chat.py picks: CUDA bf16, else CPU fp32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32)
    model = model.to("cuda" if cuda else "cpu").eval()
    rates = {}
    for turn in TURNS:
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}] + history[: 2 * (turn - 1)]
        messages.append({"role": "user", "content": f"第{turn}轮：{MESSAGE}"})
        ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                        add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
        samples = []
        for _ in range(2):
            with torch.no_grad():
                start = time.perf_counter()
                model.generate(ids, max_new_tokens=1, do_sample=False)
                prefill = time.perf_counter() - start
                start = time.perf_counter()
                out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                total = time.perf_counter() - start
            samples.append((out.shape[1] - ids.shape[1] - 1) / max(total - prefill, 1e-9))
        rates[turn] = samples[0]  # the first pass at these shapes, as in a real conversation
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--compile", action="store_true", help="also time chat.py --compile (same run, same model)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from prep.tiny_model import build_tiny_model

            model_dir = build_tiny_model(Path(tmp) / "model", [ROOT / "data" / "seed"], hidden_size=args.hidden,
                                         layers=args.layers, heads=8, kv_heads=2, vocab_size=8000,
                                         max_position_embeddings=8192)  # Llama-3's window: chat.py's 4,096 budget applies
        our_ttft, history, our_rate = ours(model_dir, args.new_tokens)
        compiled = None
        if args.compile:
            try:
                compiled = ours(model_dir, args.new_tokens, compile=True)
            except PrepError as err:  # (no C compiler for triton, say): the other engines are still timed, exit 1
                print(f"chat.py --compile: {err}", flush=True)
        lf_ttft = llamafactory(model_dir, history, args.new_tokens)
        bare_rate = bare_generate(model_dir, history, args.new_tokens)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}; model: {args.model or f'random Llama, hidden {args.hidden}, {args.layers} layers'}")
    print("| turn | chat.py TTFT, first token / first text (s) | LLaMA-Factory ChatModel, first token / first text (s) | ratio, first token | ratio, first text |")
    print("|---|---|---|---|---|")
    for turn in TURNS:
        (ours_token, ours_text), (lf_token, lf_text) = our_ttft[turn], lf_ttft[turn]
        print(f"| {turn} | {ours_token:.4f} / {ours_text:.4f} | {lf_token:.4f} / {lf_text:.4f} | {ours_token / lf_token:.2f} | {ours_text / lf_text:.2f} |")
    print("| turn | chat.py decode tokens/s (tokens) | bare model.generate decode tokens/s | ratio |")
    print("|---|---|---|---|")
    for turn in TURNS:
        rate, tokens = our_rate[turn]
        print(f"| {turn} | {rate:.1f} ({tokens}) | {bare_rate[turn]:.1f} | {rate / bare_rate[turn]:.2f} |")
    ratios = [our_rate[t][0] / bare_rate[t] for t in TURNS if our_rate[t][1] >= 8]  # too short a reply times nothing
    if ratios:
        print(f"decode ratio, median over turns with >= 8 tokens: {statistics.median(ratios):.2f}")
    results = {"device": device, "ttft_ours": our_ttft, "ttft_llamafactory": lf_ttft,
               "decode_ours": {t: r for t, (r, _) in our_rate.items() if t in TURNS}, "decode_bare": bare_rate}
    if compiled:
        compiled_ttft, compiled_history, compiled_rate = compiled
        print("| turn | chat.py --compile TTFT, first token (s) | ratio to ChatModel | ratio to chat.py | --compile decode tokens/s | ratio to bare generate |")
        print("|---|---|---|---|---|---|")
        for turn in TURNS:
            token, rate = compiled_ttft[turn][0], compiled_rate[turn][0]
            print(f"| {turn} | {token:.4f} | {token / lf_ttft[turn][0]:.2f} | {token / our_ttft[turn][0]:.2f} | {rate:.1f} | "
                  f"{rate / bare_rate[turn]:.2f} |")
        print(f"--compile replies equal chat.py's: {compiled_history == history}")
        results |= {"ttft_compiled": compiled_ttft, "decode_compiled": {t: compiled_rate[t][0] for t in TURNS}}
    print(json.dumps(results))
    if args.compile and not compiled:
        sys.exit(1)


if __name__ == "__main__":
    main()
