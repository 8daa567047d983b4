#!/usr/bin/env python3
"""Talk to the fine-tuned counselling model in the terminal.

    python chat.py                       # newest merge under runs/, interactive
    python chat.py --model runs/demo/merged --prompt "我最近总是失眠"
    python chat.py --prompt "..." --json # {"reply": ..., "safety": {...}, ...}
    python chat.py --model BASE --adapter runs/x/lora   # LoRA adapter without merging
    python chat.py --web                 # Gradio page on http://127.0.0.1:7860
    python chat.py --compile             # GPU: static KV cache + CUDA graphs, compiled at start-up

Commands in the interactive loop: /reset, /system TEXT (/system alone shows the current one), /save FILE, /exit.
No conversation is written to disk unless you ask with /save.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from prep.chat import ChatSession, GenerationOptions, latest_merged_model  # noqa: E402
from prep.text import clean_message  # noqa: E402
from prep.errors import PrepError, file_error_sentence  # noqa: E402
from prep.fsutil import atomic_write_json  # noqa: E402
from prep.prompts import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from prep.safety import DEFAULT_HOTLINES  # noqa: E402


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; expected a number from 1 to 65535")
    return int(text)


class _ShowsDefaults(argparse.HelpFormatter):
    """--help names each option's default value, unless it says its own or has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat with the merged counselling model.", formatter_class=_ShowsDefaults)
    parser.add_argument("--model", type=Path, help="merged model folder (default: newest runs/*/merged), or the base model with --adapter")
    parser.add_argument("--adapter", type=Path, help="LoRA adapter folder to apply on --model (peft, not merged)")
    parser.add_argument("--template", default="llama3", help="LLaMA-Factory template the model was trained with (checked at load)")
    parser.add_argument("--load-in-4bit", action="store_true", help="4-bit weights (CUDA, bitsandbytes)")
    parser.add_argument("--load-in-8bit", action="store_true", help="8-bit weights (CUDA, bitsandbytes)")
    parser.add_argument("--compile", action="store_true",
                        help="static KV cache + torch.compile (CUDA graphs on a GPU), compiled at start-up: meant for GPUs, where an eager forward is bound by kernel launches")
    parser.add_argument("--hotline", action="append", help="a hotline the safety guard names (repeatable; default 12356 and 400-161-9995)")
    parser.add_argument("--context-tokens", type=int, default=4096, help="token budget of the prompt plus the reply (at most the model's max_position_embeddings)")
    parser.add_argument("--web", action="store_true", help="serve a chat page instead of the terminal loop")
    parser.add_argument("--host", default="127.0.0.1", help="web host (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_port, default=7860, help="web port")
    parser.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT, help="system prompt")
    parser.add_argument("--prompt", help="answer this one message and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON object per answer")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling: the likeliest tokens up to this probability")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest reply, in tokens")
    parser.add_argument("--repetition-penalty", type=float, default=1.1, help="1.0 for none")
    return parser.parse_args(argv)


COMMANDS = ("/exit", "/quit", "/reset", "/system", "/save", "/help")
HELP = "命令：/reset 清空对话，/system 查看系统提示，/system 文本 更换系统提示，/save 文件 保存对话，/exit 退出"


def _note(text: str, as_json: bool) -> None:
    """A command's acknowledgement: on stderr with --json, so stdout stays one JSON object per line."""
    print(text, file=sys.stderr if as_json else sys.stdout, flush=True)


def _clean_input(text: str) -> str:
    """A line as typed (see ``clean_message``), without a byte-order mark from a Windows file."""
    return clean_message(text).lstrip("\ufeff").strip()


def _print_reply(session: ChatSession, message: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(session.ask(message).to_json(), ensure_ascii=False), flush=True)
        return
    for piece in session.stream(message):
        print(piece, end="", flush=True)
    print(flush=True)


def _command(session: ChatSession, line: str, as_json: bool, saved: set[Path]) -> bool:
    """Handle a /command; return False to leave the loop."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        _note("（对话已清空）", as_json)
    elif name == "/system" and not arg:  # shows the prompt; replacing it (and clearing the talk) needs the text
        _note(f"（当前系统提示：{session.system or '无'}）\n（更换请输入：/system 新的系统提示）", as_json)
    elif name == "/system":
        session.system = arg
        session.reset()
        _note("（系统提示已更新，对话已清空）", as_json)
    elif name == "/save" and arg:
        _note(_save(session, arg, saved), as_json)
    else:
        _note(HELP, as_json)
    return True


def _save(session: ChatSession, arg: str, saved: set[Path]) -> str:
    """Write the conversation to the file ``arg`` names (owner-readable only: it is a counselling transcript); an
    existing file is replaced only if this session wrote it. Returns what to tell the user: it never raises."""
    shown = arg.replace("\0", "\\0")  # as typed, a NUL made visible
    try:
        path = Path(arg).expanduser()
        if path.exists() and path.resolve() not in saved:
            return f"（{path} 已存在，没有覆盖；请换一个文件名）"
        atomic_write_json(_under_folders(path), {"system": session.system, "messages": session.history}, mode=0o600)
        saved.add(path.resolve())
    except OSError as err:  # a name too long, no permission, a full disk, a file where a folder should be
        return f"（无法保存到 {shown}：{err.strerror or err}）"
    except (RuntimeError, ValueError):  # "~name" of no user on this machine; a NUL in the path
        return f"（无法保存到 {shown}：{'路径里不能有空字符' if chr(0) in arg else '找不到这个用户的主目录'}）"
    return f"（对话已保存到 {path}）"


def _under_folders(path: Path) -> Path:
    """``path``, unless what exists above it is a file, not a folder (creating the folders would say "File exists")."""
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{above} 是文件，不是文件夹")
    return path


def interactive(session: ChatSession, as_json: bool) -> None:
    tty = sys.stdin.isatty()
    if tty:
        print("心理咨询助手已就绪。输入 /exit 退出，/reset 清空对话。")
    saved: set[Path] = set()
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 reach _clean_input instead of raising (any locale)
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            line = _clean_input(input("用户：" if tty else ""))
        except EOFError:
            if tty:  # Ctrl-D: the shell's prompt goes on a line of its own
                print(flush=True)
            break
        if not line:
            continue
        if line.split(" ", 1)[0] in COMMANDS:  # anything else, "/我不想活了" too, is a message
            if not _command(session, line, as_json, saved):
                break
            continue
        if tty and not as_json:
            print("助手：", end="", flush=True)
        _print_reply(session, line, as_json)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.system = clean_message(args.system)  # bytes that are not UTF-8 (a GBK terminal), as messages are cleaned
    try:
        if args.prompt is not None and not _clean_input(args.prompt):
            raise PrepError("--prompt is empty; give the message to send.")
        if args.context_tokens < 2:  # (the error said --max-new-tokens leaves no room)
            raise PrepError(f"--context-tokens {args.context_tokens}: expected a token budget of 2 or more (default 4096).")
        if args.adapter and not args.model:
            raise PrepError("--adapter needs --model with the base model folder it was trained on.")
        model_dir = args.model or latest_merged_model()
        options = GenerationOptions(args.temperature, args.top_p, args.max_new_tokens, args.repetition_penalty)
        quantization = "4bit" if args.load_in_4bit else "8bit" if args.load_in_8bit else None
        if args.compile:
            import torch

            if not torch.cuda.is_available():
                print("warning: --compile is meant for CUDA GPUs; on a CPU it adds a compilation at start-up and, after the "
                      "first turns, about doubles the time to the first token (bench/README.md).", file=sys.stderr)
        session = ChatSession(model_dir, system=args.system, options=options, adapter_dir=args.adapter, quantization=quantization,
                              template=args.template or None, context_tokens=args.context_tokens, compile=args.compile,
                              hotlines=tuple(args.hotline) if args.hotline else DEFAULT_HOTLINES)
        if args.web:
            from prep.webchat import serve

            if args.host not in ("127.0.0.1", "localhost", "::1"):
                print(f"warning: serving on {args.host}: anyone who can reach this address can read the conversations.", file=sys.stderr)
            try:
                serve(session, args.host, args.port)
            except OSError as err:  # the port is taken, or the host is not this machine's
                raise PrepError(f"cannot serve on {args.host}:{args.port} ({err}); pick another --port or --host.") from None
        elif args.prompt is not None:
            _print_reply(session, _clean_input(args.prompt), args.json)
        else:
            interactive(session, args.json)
    except PrepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader (| head) stopped reading: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        if err.filename is None:
            raise
        print(f"error: {file_error_sentence(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
