"""chat.py's terminal front end without a model: /save, /system, start-up options, Ctrl-D."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def chat():
    spec = importlib.util.spec_from_file_location("chat_cli", ROOT / "chat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeSession:
    """What the loop uses of ``ChatSession``; records what it was built with and asked."""

    made: list[dict] = []

    def __init__(self, model_dir=None, system="默认提示", **kwargs):
        self.system, self.history, self.asked = system, [{"role": "user", "content": "你好"}], []
        FakeSession.made.append({"system": system, **kwargs})

    def reset(self):
        self.history = []

    def stream(self, message):
        self.asked.append(message)
        yield "好的"


def command(chat, session, line, saved=None):
    return chat._command(session, line, False, set() if saved is None else saved)


@pytest.mark.parametrize("name", ["a" * 300 + ".json", "~no_such_user_xyz/x.json", "a\0b.json", "notes.txt/x.json"])
def test_save_that_cannot_be_written_is_one_note_and_the_session_goes_on(chat, tmp_path, monkeypatch, capsys, name):
    """A name too long, ~ of no user and a NUL raised out of /save (the conversation lost); a file where a folder
    should be said only "File exists"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes", encoding="utf-8")
    session = FakeSession()
    assert command(chat, session, f"/save {name}") is True
    out = capsys.readouterr().out
    assert out.startswith("（无法保存到 ") and out.count("\n") == 1, out
    assert session.history and (tmp_path / "notes.txt").read_text(encoding="utf-8") == "my notes"
    if name.startswith("notes.txt"):
        assert "notes.txt 是文件，不是文件夹" in out
    command(chat, session, "/save ok.json")  # the conversation can still be saved
    assert json.loads((tmp_path / "ok.json").read_text(encoding="utf-8"))["messages"] == session.history


def test_bare_system_shows_the_prompt_and_changes_nothing(chat, capsys):
    session = FakeSession(system="你是一位耐心的倾听者。")
    command(chat, session, "/system")
    out = capsys.readouterr().out
    assert session.system == "你是一位耐心的倾听者。" and session.history  # not the default, not cleared
    assert "你是一位耐心的倾听者。" in out and "/system 新的系统提示" in out
    command(chat, session, "/system 新提示")
    assert session.system == "新提示" and not session.history


def run_main(chat, monkeypatch, *argv):
    FakeSession.made = []
    monkeypatch.setattr(chat, "ChatSession", FakeSession)
    return chat.main(["--model", "unused", *argv])


def test_system_option_with_bytes_that_are_not_utf8_is_cleaned(chat, monkeypatch, capsys):
    """--system from a GBK terminal (surrogate escapes) reached the tokenizer: TypeError at start-up."""
    gbk = b"\xc4\xe3\xba\xc3".decode("utf-8", "surrogateescape")
    assert run_main(chat, monkeypatch, "--system", gbk, "--prompt", "你好") == 0
    system = FakeSession.made[0]["system"]
    assert set(system) == {"\ufffd"} and system.encode("utf-8")  # no lone surrogates left


@pytest.mark.parametrize("prompt", ["", "   ", "\ufeff "])
def test_empty_prompt_is_an_error_before_the_model_loads(chat, monkeypatch, capsys, prompt):
    assert run_main(chat, monkeypatch, "--prompt", prompt) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --prompt") and err.count("\n") == 1 and not FakeSession.made


def test_a_context_budget_below_two_tokens_names_its_option(chat, monkeypatch, capsys):
    """--context-tokens -5 was reported as '--max-new-tokens 512 leaves no room for the prompt'."""
    assert run_main(chat, monkeypatch, "--context-tokens", "-5", "--prompt", "你好") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --context-tokens -5: expected") and not FakeSession.made


class TtyAtEof(io.StringIO):
    def isatty(self):
        return True


def test_ctrl_d_at_the_prompt_ends_the_line(chat, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", TtyAtEof(""))
    chat.interactive(FakeSession(), False)
    assert capsys.readouterr().out.endswith("用户：\n")


def test_the_default_model_is_the_newest_finished_merge(tmp_path):
    """A merge that did not finish (config.json written, no weights yet: out of disk, killed) was picked as the newest,
    so chat.py refused to start although a finished merge was there."""
    import os

    from prep.chat import latest_merged_model

    finished, unfinished = tmp_path / "demo" / "merged", tmp_path / "later" / "merged"
    for folder in (finished, unfinished):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}", encoding="utf-8")
    (finished / "model.safetensors").write_bytes(b"weights")
    os.utime(finished / "config.json", (1, 1))  # the finished one is older
    assert latest_merged_model(tmp_path) == finished
    (finished / "model.safetensors").unlink()  # none finished: the newest, so that the check says what is missing
    assert latest_merged_model(tmp_path) == unfinished


def test_help_names_the_defaults_the_readme_relies_on(chat, monkeypatch, capsys):
    """--help showed no defaults (the web port 7860, the sampling settings)."""
    monkeypatch.setattr(sys, "argv", ["chat.py", "--help"])
    with pytest.raises(SystemExit) as done:
        chat.main()
    shown = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    for default in ("web port (default: 7860)", "(default: 0.7)", "(default: 0.9)", "(default: 512)", "(default: 1.1)"):
        assert default in shown, default
    assert "(default: None)" not in shown and "(default: False)" not in shown
