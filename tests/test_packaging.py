"""A wheel (``pip install .``, not editable) carries the data the toolkit needs: the crisis detector trains on the
same labelled messages as in a checkout, and distill, eval and review find their defaults outside site-packages."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

from conftest import ROOT, tool_env
from prep.crisis_model import training_examples
from prep.evaluate import load_plan

CHECK = r"""
import json, sys, warnings
from pathlib import Path
warnings.simplefilter("error")  # a detector without its training data only warns: make that a failure
import prep
from prep import resources
from prep.crisis_model import training_examples
from prep.evaluate import load_plan
from prep.distill import DEFAULT_TOPICS, DistillConfig, Template
from prep.evaluate import load_plan
from prep.review import FEEDBACK_DIR
from prep.safety import detect_crisis
config = DistillConfig(out=Path("distill"))
print(json.dumps({
    "package": prep.__file__, "in_checkout": resources.in_checkout(), "examples": len(training_examples()[0]),
    "crisis": detect_crisis("最近总觉得活着没什么意思，想找个地方安静地消失").crisis,
    "ordinary": detect_crisis("今天加班累死了，想早点睡").crisis,
    "templates": [bool(Template.load(config.single_template)), bool(Template.load(config.multi_template))],
    "topics": DEFAULT_TOPICS.is_file(), "plan_cases": len(load_plan()), "feedback": str(FEEDBACK_DIR),
}))
"""


def test_an_installed_wheel_has_the_checkouts_crisis_detector_and_defaults(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, env=tool_env(), capture_output=True)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=work, env={**tool_env(), "PYTHONPATH": str(tmp_path / "site")},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert found["package"].startswith(str(tmp_path / "site")) and not found["in_checkout"]
    assert found["examples"] == len(training_examples()[0])
    assert found["crisis"] and not found["ordinary"]
    assert found["templates"] == [True, True] and found["topics"] and found["plan_cases"] == len(load_plan())
    assert found["feedback"] == str(work / "data" / "feedback")
