"""Dialogue engine behind ``chat.py``: load a merged model, keep history, generate, guard safety.

The chat template and stop tokens come from the model's own tokenizer
(``<|eot_id|>`` and eos for Llama-3). History is trimmed to a token budget that
keeps the system prompt and the newest turns. Every reply to a message the
crisis detector flags carries the hotline referral, whatever the model said.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prep.errors import PrepError
from prep.fsutil import has_model_weights
from prep.prompts import DEFAULT_SYSTEM_PROMPT
from prep.safety import DEFAULT_HOTLINES, crisis_in_latest, ensure_referral, prepare_detector

RUNS_DIR = Path(__file__).resolve().parent.parent / "runs"
GENERATE_DEFAULT_TOP_K = 50  # transformers' generate samples from the 50 likeliest tokens unless told otherwise
# When the history no longer fits, the oldest exchanges are dropped until the history fills at most this share of
# the room the system prompt and the new message leave, and the dropped ones stay dropped: the next turns extend
# the cached prefix. Dropping just enough each turn would shift the whole window every turn and re-prefill nearly
# all of it each time.
TRIM_TO = 0.75
# --compile: every prompt chunk of up to 512 tokens is padded to the next of these lengths, so that a few compiled
# shapes (CUDA graphs on a GPU) serve every message; the decode step is a shape of its own (1). Longer chunks (a
# long paste, the history re-read after a trim) run eagerly: there the arithmetic, not the launches, is the cost.
PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512)


def grouped_sdpa(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """transformers' SDPA attention, except that with a mask (always there over a static cache) the query heads
    that share a key/value head are stacked as extra query rows instead of copying the keys and values once per
    query head: for Llama-3-8B over a 4,096-token static cache that copy is ~4 GB of memory traffic a token."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, width = query.shape
    groups = heads // key.shape[1]
    if attention_mask is None or groups == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    stacked = query.reshape(batch, key.shape[1], groups * length, width)  # head h = kv head h // groups
    mask = attention_mask.repeat(1, 1, groups, 1)  # row g * length + i is query i's row
    out = torch.nn.functional.scaled_dot_product_attention(stacked, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, length, width).transpose(1, 2).contiguous(), None


def use_grouped_attention(model) -> None:
    """Switch ``model`` to ``grouped_sdpa`` (registered with transformers, with SDPA's masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register("grouped_sdpa", grouped_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register("grouped_sdpa", sdpa_mask)
    model.set_attn_implementation("grouped_sdpa")


@dataclass
class GenerationOptions:
    """Sampling settings; temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    repetition_penalty: float = 1.1

    def __post_init__(self) -> None:
        """Bad settings are one sentence before the model loads, not a transformers traceback on the first message."""
        problems = [
            f"--temperature {self.temperature}: expected 0 (greedy) or more" if not 0 <= self.temperature < math.inf else "",
            f"--top-p {self.top_p}: expected more than 0 and at most 1" if not (0 < self.top_p <= 1 or (
                self.top_p == 0 and self.temperature == 0)) else "",  # greedy ignores top-p; 0 is a common way to say it
            f"--max-new-tokens {self.max_new_tokens}: expected 1 or more" if not self.max_new_tokens >= 1 else "",
            f"--repetition-penalty {self.repetition_penalty}: expected more than 0 (1 is none)"
            if not 0 < self.repetition_penalty < math.inf else "",
        ]
        if any(problems):
            raise PrepError("; ".join(p for p in problems if p) + ".")


# The answer to a message that does not fit in the context window with the system prompt and the reply's room.
TOO_LONG = ("（这条消息太长了：连同系统提示共 {tokens} 个 token，超过了一次能读的 {budget} 个。"
            "请分几段发送，或者精简一下再发。）")


@dataclass
class Reply:
    """One answer with what the safety guard did and how fast it came."""

    text: str
    crisis: bool
    referral_added: bool
    tokens: int
    ttft_s: float  # from the message to the first visible text
    tokens_per_s: float
    first_token_s: float = 0.0  # from the message to the first generated token (a character can take several)
    prefill_tokens: int = 0  # prompt tokens computed for this reply (the rest came from the previous turns' cache)

    def to_json(self) -> dict:
        return {
            "reply": self.text,
            "safety": {"crisis": self.crisis, "referral_added": self.referral_added},
            "tokens": self.tokens,
            "ttft_s": round(self.ttft_s, 4),
            "tokens_per_s": round(self.tokens_per_s, 2),
        }


def latest_merged_model(runs_dir: Path = RUNS_DIR) -> Path:
    """The newest finished merge (a folder with config.json) under the runs folder."""
    candidates = [p.parent for p in Path(runs_dir).glob("*/merged/config.json")]
    if not candidates:
        raise PrepError(f"no merged model under {runs_dir}; run 'bash run_sft.sh demo' first or pass --model DIR.")
    finished = [p for p in candidates if has_model_weights(p)] or candidates  # (none finished: check_model_dir says why)
    return max(finished, key=lambda p: (p / "config.json").stat().st_mtime)


def _loaded(path: Path, what: str, load, *args, **kwargs):
    """``load(*args, **kwargs)``, with a corrupt file (config.json that is not JSON, truncated weights) as one
    sentence instead of a transformers traceback."""
    try:
        return load(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - safetensors and tokenizers raise their own types; Ctrl-C still passes
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PrepError(f"{path}: cannot load the {what} ({first_line[:300]}); expected an unmodified llamafactory-cli "
                        "export or train output.") from None


CONTEXT_TOKENS = 4096  # the default token budget of a prompt and its reply together


def fitted_context(context_tokens: int, window: object) -> int:
    """The token budget of a prompt and its reply: ``context_tokens``, never more than the model's window
    (``max_position_embeddings``, when the config gives one)."""
    return window if isinstance(window, int) and 0 < window < context_tokens else context_tokens


def check_model_dir(path: Path) -> Path:
    """A clear error for a missing or unfinished model folder."""
    path = Path(path)
    if not path.is_dir():
        raise PrepError(f"{path}: no such model folder; expected a merged model (llamafactory-cli export output).")
    if not (path / "config.json").exists():
        raise PrepError(f"{path}: no config.json; the folder is not a finished model export.")
    if not has_model_weights(path):
        raise PrepError(f"{path}: no weights (*.safetensors); the export did not finish.")
    if not (path / "tokenizer_config.json").exists():
        raise PrepError(f"{path}: no tokenizer; expected tokenizer files next to the weights.")
    return path


_PROBE = [
    {"role": "system", "content": "系统提示"},
    {"role": "user", "content": "你好，我最近睡不好。"},
    {"role": "assistant", "content": "听起来你很辛苦。"},
    {"role": "user", "content": "还有点焦虑。"},
]


def check_template(tokenizer, template_name: str) -> None:
    """The tokenizer's chat template must give the same prompt ids as LLaMA-Factory's template.

    A model answers well only with the prompt format it was trained on; a
    mismatch (another template, a missing system turn, extra spaces) is an error.
    """
    from llamafactory.data.template import TEMPLATES

    if template_name not in TEMPLATES:
        raise PrepError(f"--template {template_name}: not a LLaMA-Factory template name.")
    template = TEMPLATES[template_name]
    text = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    ours = tokenizer(text, add_special_tokens=False)["input_ids"]
    messages = _PROBE[1:] + [{"role": "assistant", "content": ""}]
    prompt_ids, _ = template.encode_oneturn(tokenizer, messages, system=_PROBE[0]["content"])
    if list(ours) != list(prompt_ids):
        raise PrepError(
            f"the model's chat template does not match LLaMA-Factory's '{template_name}' template it was trained with; "
            "export it again with the same 'template' or pass --template NAME."
        )


class IncrementalDecoder:
    """Text of a token stream as it grows, never splitting a character across pieces.

    Decodes a short window (the tokens since the last emitted piece, plus the ones
    before them for context) instead of the whole reply at every token, and holds
    back a piece that ends in an incomplete UTF-8 sequence (U+FFFD) until the rest
    of the character arrives: one Chinese character is often two or three
    byte-level tokens.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # tokens before this index are already emitted

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _unread(self) -> str:
        """Text the tokens after ``read`` add to the window's text."""
        before = self._decode(self.tokens[self.prefix:self.read])
        after = self._decode(self.tokens[self.prefix:])
        return after[len(before):] if len(after) > len(before) else ""

    def push(self, token: int) -> str:
        self.tokens.append(token)
        piece = self._unread()
        if not piece or piece.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.tokens)
        return piece

    def flush(self) -> str:
        """Whatever is held back at the end of the stream."""
        piece = self._unread()
        self.prefix = self.read = len(self.tokens)
        return piece


@dataclass
class ChatSession:
    """A model, its tokenizer, a system prompt and the conversation so far."""

    model_dir: Path
    system: str = DEFAULT_SYSTEM_PROMPT
    options: GenerationOptions = field(default_factory=GenerationOptions)
    hotlines: tuple[str, ...] = DEFAULT_HOTLINES
    context_tokens: int = CONTEXT_TOKENS
    adapter_dir: Path | None = None  # a LoRA adapter on top of model_dir (peft, not merged)
    quantization: str | None = None  # "4bit" | "8bit" (CUDA + bitsandbytes)
    template: str | None = "llama3"  # LLaMA-Factory template the model was trained with; None skips the check
    reuse_cache: bool = True
    guard: bool = True  # the crisis guard; evaluation switches it off to score the model alone
    compile: bool = False  # a static KV cache and torch.compile (CUDA graphs on a GPU), compiled at load
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.compile and (self.quantization or self.adapter_dir):
            raise PrepError("--compile needs a merged model in bf16/fp32: leave out --load-in-4bit/8bit and --adapter "
                            "(merge the adapter with llamafactory-cli export).")
        self.model_dir = check_model_dir(self.model_dir)
        self.tokenizer = self._load_tokenizer()
        self.model = self._load_model()
        self.stop_ids = self._stop_ids()
        self.context_tokens = fitted_context(self.context_tokens, getattr(self.model.config, "max_position_embeddings", None))
        if self.options.max_new_tokens >= self.context_tokens:
            raise PrepError(f"--max-new-tokens {self.options.max_new_tokens} leaves no room for the prompt: the context "
                            f"is {self.context_tokens} tokens (--context-tokens, at most the model's window); expected "
                            f"fewer new tokens than that.")
        if self.template:
            check_template(self.tokenizer, self.template)
        self._static = None  # with compile: the session's static KV cache, context_tokens long
        self._compiled = self._compile() if self.compile else None
        self._shapes_compiled = False
        self._cache = None
        self._cache_ids: list[int] = []
        self._dropped: list[dict] = []  # the oldest exchanges trimmed away, which stay away (see TRIM_TO)
        self._prefill_system()
        if self.guard:
            prepare_detector()  # not on the user's first message

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        source = self.adapter_dir if self.adapter_dir and (Path(self.adapter_dir) / "tokenizer_config.json").exists() else self.model_dir
        tokenizer = _loaded(source, "tokenizer", AutoTokenizer.from_pretrained, source)
        if not tokenizer.chat_template:
            raise PrepError(f"{source}: the tokenizer has no chat template; export with 'template: llama3'.")
        return tokenizer

    def _load_model(self):
        import torch
        from transformers import AutoModelForCausalLM

        cuda = torch.cuda.is_available()
        if cuda:
            # cuDNN's attention builds an execution graph for each new key length: every decode step is
            # a new length, and that cost 2/3 of the decode speed on an H200 (bench/README.md). Flash and
            # memory-efficient SDPA kernels need no plan.
            torch.backends.cuda.enable_cudnn_sdp(False)
        kwargs: dict = {"dtype": torch.bfloat16 if cuda else torch.float32}
        if self.quantization:
            if not cuda:
                raise PrepError(f"--load-in-{self.quantization} needs a CUDA GPU; on CPU leave it out (fp32 is used).")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(**{f"load_in_{self.quantization}": True})
            kwargs["device_map"] = "auto"
        model = _loaded(self.model_dir, "model", AutoModelForCausalLM.from_pretrained, self.model_dir, **kwargs)
        if not self.quantization:
            model = model.to("cuda" if cuda else "cpu")
        if self.adapter_dir:
            if not (Path(self.adapter_dir) / "adapter_config.json").exists():
                raise PrepError(f"{self.adapter_dir}: no adapter_config.json; expected a LoRA output folder (llamafactory-cli train).")
            from peft import PeftModel

            model = _loaded(self.adapter_dir, "adapter", PeftModel.from_pretrained, model, self.adapter_dir)
        return model.eval()

    def _compile(self):
        """The model's forward compiled over a static KV cache that lives as long as the session."""
        import torch
        from transformers import StaticCache

        use_grouped_attention(self.model)
        config = self.model.config
        self._static = StaticCache(config=config, max_cache_len=self.context_tokens)
        # allocated now, outside any compiled graph, so its tensors keep fixed addresses (CUDA graphs need them)
        self._static.early_initialization(1, config.num_key_value_heads,
                                          getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
                                          self.model.dtype, self.model.device)
        self._static_length = 0  # where the static cache writes next (its layers' own counters, mirrored)
        # "reduce-overhead" replays CUDA graphs on a GPU: one launch per forward instead of one per kernel
        return torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=True)

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for token in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(i for i in ids if i is not None)

    def reset(self) -> None:
        self.history = []
        self._dropped = []
        self._cache, self._cache_ids = None, []
        self._prefill_system()

    def _prefill_system(self) -> None:
        """Compute the keys and values of what every first prompt starts with (the system prompt and the user
        header) now, so the first message only prefills itself; on a GPU this is also the process's first
        forward (CUDA context, kernel selection), off the user's first message. With ``compile`` this is
        where every shape is compiled."""
        import torch

        if not (self.reuse_cache or self._compiled):
            return
        renders = [self._prompt_ids(probe)[0].tolist() for probe in ("甲", "乙")]
        prefix = []
        for one, other in zip(*renders):
            if one != other:
                break
            prefix.append(one)
        if not prefix and self._compiled is None:
            return
        # (with compile, shapes are compiled here even when there is no shared prefix: a CUDA graph recorded later,
        # in the web chat's worker thread, would fail)
        start = prefix or renders[0][:1]
        cache, device = self._new_cache(), self.model.device
        try:
            with torch.no_grad():
                self._forward(torch.tensor([start], device=device), cache, 0)
                # One message-sized and one decode-sized step on top (the first calls at new shapes are the slow
                # ones), then back to the shared prefix.
                message = renders[0][len(start):]
                self._forward(torch.tensor([message], device=device), cache, len(start))
                self._forward(torch.tensor([message[-1:]], device=device), cache, len(start) + len(message))
                if self._compiled is not None and not self._shapes_compiled:
                    self._compile_shapes(start, cache)
                    self._shapes_compiled = True
        except Exception as err:
            if self._compiled is None:
                raise
            # torch.compile's failures (no C compiler, an operation it cannot trace) are many and long
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PrepError(f"--compile failed while compiling {self.model_dir} ({reason}); run without --compile.") from err
        if cache is not self._static:
            cache.crop(len(prefix))
        if self.reuse_cache and prefix:
            self._cache, self._cache_ids = cache, prefix

    def _compile_shapes(self, prefix: list[int], cache) -> None:
        """Run each prefill bucket and the decode step twice after ``prefix`` (CUDA graph trees warm a shape up on
        its first run and record it on the second), so no message waits for a compilation."""
        import torch

        for size in (1, *PREFILL_BUCKETS):
            if len(prefix) + size > self.context_tokens:
                break
            ids = torch.tensor([[prefix[i % len(prefix)] for i in range(size)]], device=self.model.device)
            for _ in range(2):
                self._forward(ids, cache, len(prefix))

    def _new_cache(self, tokens: int = 0):
        """The static cache when compiled and a turn of ``tokens`` prompt tokens plus its reply fits in it; a
        dynamic one otherwise (a message longer than the budget on its own is answered uncompiled, not cut)."""
        from transformers import DynamicCache

        return self._static if self._fits_static(tokens) else DynamicCache()

    def _fits_static(self, tokens: int) -> bool:
        return self._static is not None and tokens + self.options.max_new_tokens <= self.context_tokens

    def _forward(self, ids, cache, past: int):
        """Next-token logits after ``ids``, which follow the ``past`` tokens already in ``cache``; their keys and
        values are written to ``cache``."""
        if cache is self._static:
            # A static cache writes where its layers' counters say, and the positions and the causal mask are
            # derived from them too (transformers 5.6 reads no cache_position): set them when a turn starts elsewhere.
            length = ids.shape[1]
            if past != self._static_length:
                for layer in cache.layers:
                    layer.cumulative_length.fill_(past)
            size = 1 if length == 1 else next((b for b in PREFILL_BUCKETS if b >= length), None)
            if size is not None and past + size <= self.context_tokens:
                return self._compiled_forward(ids, cache, past, size)
            self._static_length = past + length  # too long for a bucket: eagerly, below
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def _compiled_forward(self, ids, cache, past: int, size: int):
        """``_forward`` through the compiled model, ``ids`` right-padded to ``size`` tokens. Padding writes stale
        keys past the message's end; nothing attends to them (causal mask), and the next tokens overwrite them."""
        import torch

        length = ids.shape[1]
        padded = ids.new_zeros((1, size))  # (always a fresh contiguous tensor: a strided view would recompile)
        padded[:, :length] = ids
        if size > 1:  # one graph for every bucket, compiled for any length from the first
            torch._dynamo.mark_dynamic(padded, 1)
        self._static_length = past + size
        keep = 1 if size == 1 else torch.tensor([length - 1], device=ids.device)  # the logits of the last real token
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are no longer needed
        logits = self._compiled(input_ids=padded, past_key_values=cache, use_cache=True, logits_to_keep=keep).logits
        return logits[:, -1, :].clone()  # a CUDA graph's output is overwritten by its next replay

    def _prompt_ids(self, message: str):
        """Token ids of system + the newest history that fits + the new message (see ``_trim``)."""
        budget = self.context_tokens - self.options.max_new_tokens
        start = len(self._dropped)
        if self.history[:start] != self._dropped:  # history replaced from outside (the web chat sets it per tab)
            start = 0
        ids = self._render(self.history[start:], message)
        if ids.shape[1] > budget and start < len(self.history):
            start, ids = self._trim(start, message, budget)
        self._dropped = self.history[:start]
        return ids

    def _trim(self, start: int, message: str, budget: int):
        """Where the kept history starts once it overflows, and the prompt from there: the oldest exchanges go
        until the history fills at most ``TRIM_TO`` of the room the system prompt and the message leave, but the
        newest exchange stays whenever it fits on its own."""
        alone = self._render([], message)
        fixed = alone.shape[1]
        room = budget - fixed
        newest = max(len(self.history) - 2, 0)  # (an odd history can only come from outside)
        while start < newest:
            start += 2  # drop the oldest exchange, keep the newest
            ids = self._render(self.history[start:], message)
            if ids.shape[1] - fixed <= room * TRIM_TO:
                return start, ids
        ids = self._render(self.history[newest:], message)
        return (newest, ids) if ids.shape[1] <= budget else (len(self.history), alone)

    def _render(self, history: list[dict], message: str):
        messages = [{"role": "system", "content": self.system}] if self.system else []
        text = self.tokenizer.apply_chat_template(messages + history + [{"role": "user", "content": message}],
                                                  tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def _reusable_cache(self, ids: list[int]):
        """The cache of the previous turn and how many of its tokens ``ids`` starts with: (None, 0) if none."""
        if not self.reuse_cache or self._cache is None or (self._static is not None and self._cache is not self._static):
            return None, 0  # (with compile, a turn that had to run on a dynamic cache is not continued on one)
        shared = 0
        for old, new in zip(self._cache_ids, ids):
            if old != new:
                break
            shared += 1
        shared = min(shared, len(ids) - 1)  # at least one new token must be computed
        if shared <= 0:
            return None, 0
        if self._cache is not self._static:
            self._cache.crop(shared)  # (a static cache needs no cropping: positions past ``shared`` are overwritten)
        return self._cache, shared

    def _logits_processors(self):
        """Repetition penalty, then (sampling only) temperature, top-k and top-p: what ``generate`` applies."""
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                  TopKLogitsWarper, TopPLogitsWarper)

        processors = LogitsProcessorList()
        if self.options.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.options.repetition_penalty))
        if self.options.temperature > 0:
            # generate's default top-k (50) unless the model's generation_config sets one; 0 turns it off
            top_k = getattr(self.model.generation_config, "top_k", None)
            top_k = GENERATE_DEFAULT_TOP_K if top_k is None else top_k
            processors.append(TemperatureLogitsWarper(self.options.temperature))
            if top_k:
                processors.append(TopKLogitsWarper(top_k))
            if self.options.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.options.top_p))
        return processors

    def _next_tokens(self, input_ids, cache, past: int, limit: int) -> Iterator[int]:
        """Generate up to ``limit`` token ids one at a time in this thread, extending ``cache`` (which holds the first
        ``past`` tokens of ``input_ids``); the stop token comes last.

        A plain decode loop rather than ``generate`` with a streamer thread: streaming
        needs no second thread, and the KV cache stays in this session's hands. (The
        GPU slowdown once blamed on the thread was cuDNN attention: see ``_load_model``.)
        """
        import torch

        processors, sample = self._logits_processors(), self.options.temperature > 0
        sequence = input_ids
        step_ids = input_ids[:, past:]
        for _ in range(limit):
            with torch.no_grad():
                scores = processors(sequence, self._forward(step_ids, cache, past).float())
                past += step_ids.shape[1]
                if sample:
                    next_id = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
                else:
                    next_id = scores.argmax(dim=-1, keepdim=True)
            token = int(next_id)
            yield token
            if token in self.stop_ids:
                return
            sequence = torch.cat([sequence, next_id], dim=-1)
            step_ids = next_id

    def stream(self, message: str) -> Iterator[str]:
        """Yield the reply as it is generated; the safety referral (if any) comes last."""
        start = time.perf_counter()
        crisis = crisis_in_latest([turn["content"] for turn in self.history if turn["role"] == "user"] + [message])
        dropped = self._dropped
        input_ids = self._prompt_ids(message).to(self.model.device)
        room = self.context_tokens - input_ids.shape[1]  # for the reply: the window is never exceeded
        if room < 1:  # the message alone (with the system prompt) fills the context: say so, not run past it
            self._dropped = dropped
            yield from self._decline(TOO_LONG.format(tokens=input_ids.shape[1], budget=self.context_tokens), crisis, start)
            return
        prompt_ids = input_ids[0].tolist()
        cache, past = self._reusable_cache(prompt_ids)
        if cache is None or (cache is self._static and not self._fits_static(len(prompt_ids))):
            cache, past = self._new_cache(len(prompt_ids)), 0
        prefill = len(prompt_ids) - past
        self._cache, self._cache_ids = None, []  # until this reply completes, nothing is reusable
        decoder = IncrementalDecoder(self.tokenizer)
        pieces, generated, first, first_token = [], [], None, None
        for token in self._next_tokens(input_ids, cache, past, min(self.options.max_new_tokens, room)):
            first_token = first_token or time.perf_counter()
            generated.append(token)
            piece = decoder.push(token) if token not in self.stop_ids else ""
            if piece:
                first = first or time.perf_counter()
                pieces.append(piece)
                yield piece
        rest = decoder.flush()  # a character cut by max_new_tokens, as generate would decode it
        if rest:
            pieces.append(rest)
            yield rest
        end = time.perf_counter()
        if self.reuse_cache and generated:
            self._cache = cache  # it holds the prompt and every generated token but the last
            self._cache_ids = prompt_ids + generated[:-1]
        text = "".join(pieces).strip()
        final, added = ensure_referral(text, self.hotlines) if crisis and self.guard else (text, False)
        if added:
            yield final[len(text):]
        # time to the first visible text; decode speed from the first token on (a character can take several)
        first, first_token = first or end, first_token or end
        count = len(generated)
        self.last_reply = Reply(final, crisis, added, count, first - start,
                                (count - 1) / (end - first_token) if end > first_token and count > 1 else 0.0, first_token - start,
                                prefill)
        self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": final}]

    def _decline(self, notice: str, crisis: bool, start: float) -> Iterator[str]:
        """Answer with ``notice`` instead of the model (the guard's referral still added); the history is unchanged."""
        final, added = ensure_referral(notice, self.hotlines) if crisis and self.guard else (notice, False)
        elapsed = time.perf_counter() - start
        self.last_reply = Reply(final, crisis, added, 0, elapsed, 0.0, elapsed, 0)
        yield final

    def ask(self, message: str) -> Reply:
        """Answer one message (non-streaming use)."""
        for _ in self.stream(message):
            pass
        return self.last_reply
