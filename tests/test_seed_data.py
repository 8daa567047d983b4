"""The bundled seed data: coverage the issue asks for, safe crisis answers, and a clean build."""

import pandas as pd
import pytest

from conftest import SEED_DIR
from prep.build import BuildOptions, build
from prep.records import CATEGORY_CRISIS, CATEGORY_OFF_TOPIC
from prep.safety import detect_crisis


@pytest.fixture(scope="module")
def seed() -> pd.DataFrame:
    frames = [pd.read_csv(path, dtype=str, keep_default_na=False) for path in sorted(SEED_DIR.glob("*.csv"))]
    assert frames, f"no CSV in {SEED_DIR}"
    for frame in frames:
        assert list(frame.columns) == ["question", "answer", "category"]
    return pd.concat(frames, ignore_index=True)


def test_coverage(seed):
    psych = seed[~seed.category.isin([CATEGORY_OFF_TOPIC, CATEGORY_CRISIS])]
    assert len(psych) >= 120 and psych.category.nunique() >= 10
    assert (seed.category == CATEGORY_OFF_TOPIC).sum() >= 40
    assert (seed.category == CATEGORY_CRISIS).sum() >= 20
    assert (seed.question.str.len() > 0).all() and (seed.answer.str.len() > 0).all()


def test_crisis_rows_carry_hotlines_and_the_detector_agrees(seed):
    crisis = seed[seed.category == CATEGORY_CRISIS]
    for _, row in crisis.iterrows():
        assert "12356" in row.answer and "400-161-9995" in row.answer and "120" in row.answer and "110" in row.answer, row.question
    missed = [q for q in crisis.question if not detect_crisis(q).crisis]
    assert not missed, f"crisis detector misses seed crisis questions: {missed}"
    false_alarms = [q for q in seed[seed.category != CATEGORY_CRISIS].question if detect_crisis(q).crisis]
    assert not false_alarms, f"crisis detector fires on ordinary seed questions: {false_alarms}"


def test_seed_builds_without_losing_a_row(tmp_path, seed):
    report = build([SEED_DIR], BuildOptions(name="seed", dataset_dir=tmp_path))
    assert report["rows_in"] == len(seed)
    assert report["rejected"] == 0 and report["duplicates"] == 0, report
    assert report["kept"] == report["train"] + report["test"] == len(seed)
