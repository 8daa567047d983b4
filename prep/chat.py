"""Dialogue engine behind ``chat.py``: load a merged model, keep history, generate, guard safety.

The chat template and stop tokens come from the model's own tokenizer
(``<|eot_id|>`` and eos for Llama-3). History is trimmed to a token budget that
keeps the system prompt and the newest turns. Every reply to a message the
crisis detector flags carries the hotline referral, whatever the model said.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread

from prep.errors import PrepError
from prep.prompts import DEFAULT_SYSTEM_PROMPT
from prep.safety import DEFAULT_HOTLINES, detect_crisis, ensure_referral

RUNS_DIR = Path(__file__).resolve().parent.parent / "runs"


@dataclass
class GenerationOptions:
    """Sampling settings; temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    repetition_penalty: float = 1.1


@dataclass
class Reply:
    """One answer with what the safety guard did and how fast it came."""

    text: str
    crisis: bool
    referral_added: bool
    tokens: int
    ttft_s: float
    tokens_per_s: float

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
    return max(candidates, key=lambda p: (p / "config.json").stat().st_mtime)


def check_model_dir(path: Path) -> Path:
    """A clear error for a missing or unfinished model folder."""
    path = Path(path)
    if not path.is_dir():
        raise PrepError(f"{path}: no such model folder; expected a merged model (llamafactory-cli export output).")
    if not (path / "config.json").exists():
        raise PrepError(f"{path}: no config.json; the folder is not a finished model export.")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
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


@dataclass
class ChatSession:
    """A model, its tokenizer, a system prompt and the conversation so far."""

    model_dir: Path
    system: str = DEFAULT_SYSTEM_PROMPT
    options: GenerationOptions = field(default_factory=GenerationOptions)
    hotlines: tuple[str, ...] = DEFAULT_HOTLINES
    context_tokens: int = 4096
    adapter_dir: Path | None = None  # a LoRA adapter on top of model_dir (peft, not merged)
    quantization: str | None = None  # "4bit" | "8bit" (CUDA + bitsandbytes)
    template: str | None = "llama3"  # LLaMA-Factory template the model was trained with; None skips the check
    reuse_cache: bool = True
    guard: bool = True  # the crisis guard; evaluation switches it off to score the model alone
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model_dir = check_model_dir(self.model_dir)
        self.tokenizer = self._load_tokenizer()
        self.model = self._load_model()
        self.stop_ids = self._stop_ids()
        if self.template:
            check_template(self.tokenizer, self.template)
        self._cache = None
        self._cache_ids: list[int] = []

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        source = self.adapter_dir if self.adapter_dir and (Path(self.adapter_dir) / "tokenizer_config.json").exists() else self.model_dir
        tokenizer = AutoTokenizer.from_pretrained(source)
        if not tokenizer.chat_template:
            raise PrepError(f"{source}: the tokenizer has no chat template; export with 'template: llama3'.")
        return tokenizer

    def _load_model(self):
        import torch
        from transformers import AutoModelForCausalLM

        cuda = torch.cuda.is_available()
        kwargs: dict = {"dtype": torch.bfloat16 if cuda else torch.float32}
        if self.quantization:
            if not cuda:
                raise PrepError(f"--load-in-{self.quantization} needs a CUDA GPU; on CPU leave it out (fp32 is used).")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(**{f"load_in_{self.quantization}": True})
            kwargs["device_map"] = "auto"
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, **kwargs)
        if not self.quantization:
            model = model.to("cuda" if cuda else "cpu")
        if self.adapter_dir:
            if not (Path(self.adapter_dir) / "adapter_config.json").exists():
                raise PrepError(f"{self.adapter_dir}: no adapter_config.json; expected a LoRA output folder (llamafactory-cli train).")
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter_dir)
        return model.eval()

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for token in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(i for i in ids if i is not None)

    def reset(self) -> None:
        self.history = []
        self._cache, self._cache_ids = None, []

    def _prompt_ids(self, message: str):
        """Token ids of system + the newest history that fits + the new message."""
        budget = self.context_tokens - self.options.max_new_tokens
        history = list(self.history)
        while True:
            messages = [{"role": "system", "content": self.system}] if self.system else []
            messages += history + [{"role": "user", "content": message}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if ids.shape[1] <= budget or not history:
                return ids
            history = history[2:]  # drop the oldest exchange, keep the newest

    def _reusable_cache(self, ids: list[int]):
        """The cache of the previous turn cropped to the prefix it shares with ``ids`` (None if nothing to reuse)."""
        if not self.reuse_cache or self._cache is None:
            return None
        shared = 0
        for old, new in zip(self._cache_ids, ids):
            if old != new:
                break
            shared += 1
        shared = min(shared, len(ids) - 1)  # at least one new token must be computed
        if shared <= 0:
            return None
        self._cache.crop(shared)
        return self._cache

    def stream(self, message: str) -> Iterator[str]:
        """Yield the reply as it is generated; the safety referral (if any) comes last."""
        from transformers import DynamicCache, TextIteratorStreamer

        crisis = detect_crisis(message).crisis
        input_ids = self._prompt_ids(message).to(self.model.device)
        cache = self._reusable_cache(input_ids[0].tolist())
        if cache is None and self.reuse_cache:
            cache = DynamicCache()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        greedy = self.options.temperature <= 0
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=input_ids.new_ones(input_ids.shape),
            max_new_tokens=self.options.max_new_tokens,
            do_sample=not greedy,
            repetition_penalty=self.options.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0],
            streamer=streamer,
            past_key_values=cache,
            return_dict_in_generate=True,
        )
        if not greedy:
            kwargs.update(temperature=self.options.temperature, top_p=self.options.top_p)
        start = time.perf_counter()
        output: dict = {}

        def generate() -> None:
            try:
                output["result"] = self.model.generate(**kwargs)
            except BaseException as err:  # surfaced in the caller's thread below
                output["error"] = err
                streamer.end()

        thread = Thread(target=generate, daemon=True)
        thread.start()
        pieces, first = [], None
        for piece in streamer:
            if piece and first is None:
                first = time.perf_counter()
            pieces.append(piece)
            yield piece
        thread.join()
        if "error" in output:
            raise output["error"]
        end = time.perf_counter()
        sequence = output["result"].sequences[0]
        if self.reuse_cache:
            self._cache = output["result"].past_key_values
            self._cache_ids = sequence.tolist()[: self._cache.get_seq_length()]
        text = "".join(pieces).strip()
        final, added = ensure_referral(text, self.hotlines) if crisis and self.guard else (text, False)
        if added:
            yield final[len(text):]
        generated = int(sequence.shape[0] - input_ids.shape[1])
        first = first or end
        self.last_reply = Reply(final, crisis, added, generated, first - start,
                                (generated - 1) / (end - first) if end > first and generated > 1 else 0.0)
        self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": final}]

    def ask(self, message: str) -> Reply:
        """Answer one message (non-streaming use)."""
        for _ in self.stream(message):
            pass
        return self.last_reply
