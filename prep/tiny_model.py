"""A tiny, randomly initialised Llama with a Llama-3-style tokenizer, for CPU runs and tests.

The tokenizer is a byte-level BPE trained on the bundled data; it carries
Llama-3's special tokens and chat template, so ``template: llama3`` in
LLaMA-Factory and the ``<|eot_id|>`` stop token behave exactly as with
Meta-Llama-3-8B-Instruct. Nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from prep.errors import PrepError

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|finetune_right_pad_id|>",
]

# Meta-Llama-3's pre-tokenizer split pattern (tokenizer.json), verbatim.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Meta-Llama-3-8B-Instruct's chat template, verbatim.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def corpus_from_inputs(inputs: Iterable[Path]) -> list[str]:
    """Texts to train the tokenizer on: every turn and system prompt of the inputs."""
    from prep.readers import read_path
    from prep.records import Conversation

    texts: list[str] = []
    for path in inputs:
        for item in read_path(Path(path)):
            if isinstance(item, Conversation):
                texts.extend(t.content for t in item.turns)
                if item.system:
                    texts.append(item.system)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with Llama-3 special tokens and chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Llama-3's own split: "\n\n" is one piece wherever it stands, as in Meta's tokenizer.json.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts + ["system user assistant\n\n"], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    return fast


# Meta-Llama-3-8B's shape (config.json): what the GPU training benchmark trains, with random weights.
LLAMA3_8B_SHAPE = {"hidden_size": 4096, "intermediate_size": 14336, "layers": 32, "heads": 32, "kv_heads": 8,
                   "vocab_size": 128256, "max_position_embeddings": 8192}


def llama_config(tokenizer, hidden_size: int, layers: int, heads: int, kv_heads: int,
                 intermediate_size: int | None = None, vocab_size: int | None = None,
                 max_position_embeddings: int = 2048, initializer_range: float = 0.02):
    """A LlamaConfig of the given shape whose special-token ids are the tokenizer's.

    ``vocab_size`` defaults to the tokenizer's length; a larger one (Llama-3's 128,256)
    gives the embedding and output layer their real size while the ids stay valid.
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=500000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|begin_of_text|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>"),
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )


def save_random_llama(out_dir: Path, tokenizer, config, seed: int = 0, device: str = "cpu", dtype=None) -> Path:
    """Initialise a Llama of ``config`` at random on ``device`` and write it with its tokenizer.

    A large shape (8B) is built on the GPU in bf16: on the CPU in fp32 it would take
    minutes and 32 GB.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|eot_id|>"), tokenizer.convert_tokens_to_ids("<|end_of_text|>")],
        pad_token_id=config.pad_token_id,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_model(out_dir: Path, inputs: list[Path], vocab_size: int = 3000, hidden_size: int = 64,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0,
                     initializer_range: float = 0.1, max_position_embeddings: int = 2048) -> Path:
    """Write a tiny Llama (safetensors), its tokenizer and generation config to ``out_dir``.

    ``initializer_range`` is larger than Llama's 0.02 on purpose: with a frozen random
    ``lm_head`` that small, LoRA could never make the logits sharp enough to learn anything.
    """
    if hidden_size < heads or hidden_size % (2 * heads) or layers < 1 or vocab_size < 1:
        raise PrepError(f"--hidden-size {hidden_size}, --layers {layers}, --vocab-size {vocab_size}: expected a hidden size that is a "
                        f"multiple of {2 * heads} (its {heads} attention heads, each of an even size), 1 or more layers and a "
                        "vocabulary of 1 or more.")
    check_tiny_model_folder(Path(out_dir))
    texts = corpus_from_inputs(inputs)
    if not texts:
        raise PrepError("no text found in the inputs to train the tiny tokenizer on.")
    tokenizer = train_tokenizer(texts, vocab_size)
    config = llama_config(tokenizer, hidden_size, layers, heads, kv_heads, max_position_embeddings=max_position_embeddings,
                          initializer_range=initializer_range)
    out_dir = save_random_llama(out_dir, tokenizer, config, seed=seed)
    (out_dir / "tiny_model.json").write_text(
        json.dumps({"built_by": "prep tiny-model", "inputs": [str(p) for p in inputs], "vocab_size": len(tokenizer),
                    "hidden_size": hidden_size, "layers": layers}, ensure_ascii=False, indent=2) + "\n",
        encoding="utf-8",
    )
    return out_dir


def is_tiny_model(folder: Path) -> bool:
    """Whether ``folder`` holds a model this module built (its tiny_model.json says so)."""
    try:
        return json.loads((folder / "tiny_model.json").read_text(encoding="utf-8")).get("built_by") == "prep tiny-model"
    except (OSError, ValueError, AttributeError):
        return False


def _may_hold_tiny_model(folder: Path) -> bool:
    """A new or empty folder, or one holding a tiny model: never a real model's."""
    return not folder.exists() or (folder.is_dir() and (not any(folder.iterdir()) or is_tiny_model(folder)))


def check_tiny_model_folder(folder: Path) -> None:
    """A tiny model is written only into a new or empty folder, or over a tiny model: never over a real model."""
    if folder.exists() and not folder.is_dir():
        raise PrepError(f"{folder} is a file; the tiny model needs a folder.")
    if not _may_hold_tiny_model(folder):
        raise PrepError(f"{folder} is not empty and holds no tiny model built by prep tiny-model; "
                        "it is not overwritten, pick a new folder.")


def demo_model_folder(model: str) -> Path:
    """The folder the demo may (re)build its tiny model in: ``model`` itself when it is new or a tiny model, and not
    a hub id such as meta-llama/Meta-Llama-3-8B-Instruct (write ./org/name for a local folder of that name)."""
    folder = Path(model).expanduser()
    hub_like = model.count("/") == 1 and not model.startswith((".", "/", "~")) and not folder.parent.is_dir()
    if not folder.exists() and hub_like and folder.parts[0] != "models":
        raise PrepError(f"demo: model '{model}' looks like a hub id, and the demo builds its tiny random model only "
                        "into a local folder; run without demo to train it, or write ./" + model + " for a local folder.")
    if not _may_hold_tiny_model(folder):
        raise PrepError(f"demo: model '{model}' is not a tiny model built by prep, and the demo would overwrite it with "
                        "random weights; pass --model " + model + " to train it as it is, or run without demo.")
    return folder
