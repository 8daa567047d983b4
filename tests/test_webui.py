"""`llamafactory-cli webui` in real headless Chromium: Data dir "." lists and previews our datasets."""

from __future__ import annotations

import subprocess

import pytest

from browser import chromium, free_port, wait_for_http, wait_until
from conftest import ROOT, tool_env, write_csv
from prep.build import BuildOptions, build

pytestmark = pytest.mark.slow
ARTIFACTS = ROOT / "tests" / "artifacts"

FIND_INPUT = """
const [labelText, selector] = arguments;
for (const label of document.querySelectorAll('label')) {
  if (label.innerText.trim().startsWith(labelText)) {
    const el = label.querySelector(selector) || label.parentElement.querySelector(selector);
    if (el) return el;
  }
}
return null;
"""




def test_webui_lists_and_previews_registered_datasets(tmp_path):
    rows = [("我最近总是失眠怎么办", "先规律作息。", "失眠"), ("考试前很焦虑", "深呼吸，慢慢来。", "焦虑")]
    build([write_csv(tmp_path / "qa.csv", rows)], BuildOptions(name="ui", dataset_dir=tmp_path, test_size=0))
    port = free_port()
    env = {**tool_env(), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(["llamafactory-cli", "webui"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, server)
        with chromium(tmp_path) as driver:
            driver.get(url)
            data_dir = wait_until(lambda: driver.execute_script(FIND_INPUT, "Data dir", "textarea, input"))
            data_dir.clear()
            data_dir.send_keys(".")
            dataset = driver.execute_script(FIND_INPUT, "Dataset", "input")
            dataset.click()
            options = wait_until(lambda: driver.execute_script(
                "return Array.from(document.querySelectorAll('ul.options li')).map(li => li.innerText.trim());"))
            assert {"ui_alpaca", "ui_sharegpt"} <= set(options) and "ui_test" not in options  # --test-size 0: none held out
            driver.execute_script(
                "for (const li of document.querySelectorAll('ul.options li')) if (li.innerText.trim() === 'ui_alpaca') li.dispatchEvent(new MouseEvent('mousedown', {bubbles: true}));")
            preview = wait_until(lambda: driver.execute_script(
                "return Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Preview dataset' && !b.disabled);"))
            preview.click()
            wait_until(lambda: "我最近总是失眠怎么办" in driver.execute_script("return document.body.innerText;"))
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "webui_datasets.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)
