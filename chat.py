#!/usr/bin/env python3
"""Talk to the fine-tuned counselling model in the terminal.

    python chat.py                       # newest merge under runs/, interactive
    python chat.py --model runs/demo/merged --prompt "我最近总是失眠"
    python chat.py --prompt "..." --json # {"reply": ..., "safety": {...}, ...}

Commands in the interactive loop: /reset, /system TEXT, /save FILE, /exit.
No conversation is written to disk unless you ask with /save.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from prep.chat import ChatSession, GenerationOptions, latest_merged_model  # noqa: E402
from prep.errors import PrepError  # noqa: E402
from prep.fsutil import atomic_write_json  # noqa: E402
from prep.prompts import DEFAULT_SYSTEM_PROMPT  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat with the merged counselling model.")
    parser.add_argument("--model", type=Path, help="merged model folder (default: newest runs/*/merged)")
    parser.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT, help="system prompt")
    parser.add_argument("--prompt", help="answer this one message and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON object per answer")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    return parser.parse_args(argv)


def _print_reply(session: ChatSession, message: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(session.ask(message).to_json(), ensure_ascii=False), flush=True)
        return
    for piece in session.stream(message):
        print(piece, end="", flush=True)
    print(flush=True)


def _command(session: ChatSession, line: str) -> bool:
    """Handle a /command; return False to leave the loop."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        print("（对话已清空）")
    elif name == "/system":
        session.system = arg.strip() or DEFAULT_SYSTEM_PROMPT
        session.reset()
        print("（系统提示已更新，对话已清空）")
    elif name == "/save" and arg.strip():
        atomic_write_json(Path(arg.strip()), {"system": session.system, "messages": session.history})
        print(f"（对话已保存到 {arg.strip()}）")
    else:
        print("命令：/reset 清空对话，/system 文本 更换系统提示，/save 文件 保存对话，/exit 退出")
    return True


def interactive(session: ChatSession, as_json: bool) -> None:
    tty = sys.stdin.isatty()
    if tty:
        print("心理咨询助手已就绪。输入 /exit 退出，/reset 清空对话。")
    while True:
        try:
            line = input("用户：" if tty else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not _command(session, line):
                break
            continue
        if tty and not as_json:
            print("助手：", end="", flush=True)
        _print_reply(session, line, as_json)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model_dir = args.model or latest_merged_model()
        options = GenerationOptions(args.temperature, args.top_p, args.max_new_tokens, args.repetition_penalty)
        session = ChatSession(model_dir, system=args.system, options=options)
        if args.prompt is not None:
            _print_reply(session, args.prompt, args.json)
        else:
            interactive(session, args.json)
    except PrepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
