"""`python chat.py --web` in real headless Chromium: type, see the streamed answer, trigger the guard."""

from __future__ import annotations

import subprocess
import sys

import pytest

from browser import chromium, free_port, wait_for_http, wait_until
from conftest import ROOT, tool_env

pytestmark = pytest.mark.slow
ARTIFACTS = ROOT / "tests" / "artifacts"


def assistant_texts(driver) -> list[str]:
    """The assistant bubbles' text, read in one script call (the DOM changes while tokens stream)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#chatbot [data-testid=\\'bot\\']'))"
        ".map(e => e.innerText.trim());"
    )


def send(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, "#message textarea")
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)




@pytest.mark.parametrize("engine", ["eager", "compile"])
def test_web_chat_streams_answers_and_guards_crisis(tmp_path, merged_model, engine):
    """Also with --compile: the page asks from Gradio's worker thread, where the compiled session must answer from
    the shapes compiled at load (on a GPU, recording a CUDA graph there fails)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "chat.py", "--web", "--model", str(merged_model), "--port", str(port), "--temperature", "0",
         "--repetition-penalty", "1.0", "--max-new-tokens", "48", *(["--compile"] if engine == "compile" else [])],
        cwd=ROOT, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, server)
        with chromium(tmp_path) as driver:
            driver.get(url)
            wait_until(lambda: driver.find_elements("css selector", "#message textarea"))
            send(driver, "我考试前特别焦虑")
            first = wait_until(lambda: [t for t in assistant_texts(driver) if t == "深呼吸，慢慢来，我在这里陪你。"])
            assert first
            send(driver, "我真的不想活了")
            wait_until(lambda: len(assistant_texts(driver)) >= 2 and "12356" in assistant_texts(driver)[-1])
            assert "400-161-9995" in assistant_texts(driver)[-1]
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / f"web_chat_{engine}.png"))
            driver.find_element("css selector", "#reset").click()
            wait_until(lambda: not assistant_texts(driver))
    finally:
        server.terminate()
        server.wait(timeout=30)
