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


@dataclass
class ChatSession:
    """A model, its tokenizer, a system prompt and the conversation so far."""

    model_dir: Path
    system: str = DEFAULT_SYSTEM_PROMPT
    options: GenerationOptions = field(default_factory=GenerationOptions)
    hotlines: tuple[str, ...] = DEFAULT_HOTLINES
    context_tokens: int = 4096
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = check_model_dir(self.model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not self.tokenizer.chat_template:
            raise PrepError(f"{self.model_dir}: the tokenizer has no chat template; export with 'template: llama3'.")
        cuda = torch.cuda.is_available()
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=torch.bfloat16 if cuda else torch.float32
        ).to("cuda" if cuda else "cpu").eval()
        self.stop_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for token in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(i for i in ids if i is not None)

    def reset(self) -> None:
        self.history = []

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

    def stream(self, message: str) -> Iterator[str]:
        """Yield the reply as it is generated; the final safety text (if any) comes last."""
        from transformers import TextIteratorStreamer

        crisis = detect_crisis(message).crisis
        input_ids = self._prompt_ids(message).to(self.model.device)
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
        )
        if not greedy:
            kwargs.update(temperature=self.options.temperature, top_p=self.options.top_p)
        start = time.perf_counter()
        output: dict = {}
        thread = Thread(target=lambda: output.setdefault("ids", self.model.generate(**kwargs)), daemon=True)
        thread.start()
        pieces, first = [], None
        for piece in streamer:
            if piece and first is None:
                first = time.perf_counter()
            pieces.append(piece)
            yield piece
        thread.join()
        end = time.perf_counter()
        text = "".join(pieces).strip()
        final, added = ensure_referral(text, self.hotlines) if crisis else (text, False)
        if added:
            yield final[len(text):]
        generated = int(output["ids"].shape[1] - input_ids.shape[1]) if "ids" in output else 0
        first = first or end
        self.last_reply = Reply(final, crisis, added, generated, first - start,
                                generated / (end - first) if end > first else 0.0)
        self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": final}]

    def ask(self, message: str) -> Reply:
        """Answer one message (non-streaming use)."""
        for _ in self.stream(message):
            pass
        return self.last_reply
