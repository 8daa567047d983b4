"""The crisis detector on labelled messages it was never trained or tuned on.

data/tests/crisis_holdout2.csv to crisis_holdout12.csv were each written by an
author who saw neither the detector nor the other sets; the classifier trains
on data/safety/*.csv and the seed, and its settings were chosen by
cross-validation on those (bench/crisis_detector.py --cv). The chat issue's
targets are recall >= 0.95 and false-positive rate <= 0.05: met over all the
blind sets together (1,570 + 1,570 messages); per set, a 100- to 150-message half carries a
binomial spread of about +-0.02, and the per-set floors below are what the
detector reaches on each set today (bench/README.md), so a change that makes it
worse fails here.
"""

import pandas as pd
import pytest

from conftest import ROOT
from prep.crisis_model import THRESHOLD
from prep.safety import crisis_score, detect_crisis, detect_crises

BLIND_SETS = [f"crisis_holdout{n}.csv" for n in range(2, 13)]
RECALL_FLOOR = 0.94  # target 0.95 per set: 1.000, 0.983, 0.973, 0.967, 0.947, 0.980, 0.973, 0.953, (0.927), 0.960, 0.953
# holdout10 (session 13) was scored blind once at 0.927: six of its fourteen professionals telling their own crisis
# (我是心理咨询师…可最近我自己每天都在想割腕) are missed, the classifier vetoing the lexicon (bench/README.md).
RECALL_FLOORS = {"crisis_holdout10.csv": 0.92}
FALSE_POSITIVE_CEILING = 0.08  # target 0.05 per set: 0.010, 0.058, 0.047, 0.007, 0.033, 0.033, 0.073, 0.067, 0.053, 0.033, 0.073


def rates(frame, use_model=True):
    predicted = frame.text.map(lambda text: detect_crisis(text, use_model=use_model).crisis)
    return predicted[frame.label == 1].mean(), predicted[frame.label == 0].mean()


def load(path):
    return pd.read_csv(path, dtype={"text": str, "label": int})


@pytest.mark.parametrize("name", BLIND_SETS)
def test_detector_on_sets_it_never_saw(name):
    frame = load(ROOT / "data" / "tests" / name)
    assert (frame.label == 1).sum() >= 60 and (frame.label == 0).sum() >= 60
    recall, false_positive_rate = rates(frame)
    assert recall >= RECALL_FLOORS.get(name, RECALL_FLOOR), f"recall {recall:.3f}"
    assert false_positive_rate <= FALSE_POSITIVE_CEILING, f"false-positive rate {false_positive_rate:.3f}"


def test_detector_on_long_messages_it_never_saw():
    """crisis_long_holdout: 150 + 150 messages of 80 to 150 characters and 6 or more clauses, a third typed as
    comma-only run-ons, the risk first, buried, last or spread out, the ordinary ones mostly look-alikes; written
    blind like the others and scored once before and once after pieces and windows for run-ons were added
    (0.980 / 0.060 -> 0.987 / 0.087; bench/README.md)."""
    frame = load(ROOT / "data" / "tests" / "crisis_long_holdout.csv")
    assert (frame.label == 1).sum() >= 150 and (frame.text.str.len() >= 80).all()
    recall, false_positive_rate = rates(frame)
    assert recall >= 0.96 and false_positive_rate <= 0.09, f"recall {recall:.3f}, false-positive rate {false_positive_rate:.3f}"


def test_detector_on_short_chat_messages_it_never_saw():
    """crisis_short_holdout2: 150 + 150 whole chat messages of 1 to 12 characters (bare means words, fragments such as
    割了, slang, pinyin; everyday counselling talk and look-alikes), written blind. Scored once before and once after
    short messages got their own model: 0.867 / 0.087 -> 0.960 / 0.040 (0.967 / 0.040 after a review's fixes;
    bench/README.md)."""
    frame = load(ROOT / "data" / "tests" / "crisis_short_holdout2.csv")
    assert (frame.label == 1).sum() >= 150 and (frame.text.str.len() <= 12).all()
    recall, false_positive_rate = rates(frame)
    assert recall >= 0.95 and false_positive_rate <= 0.05, f"recall {recall:.3f}, false-positive rate {false_positive_rate:.3f}"


def test_ordinary_short_counselling_messages_rarely_get_a_referral():
    """data/dev/counselling_chat_short_dev.csv (development, not blind): what clients type in a counselling chat,
    2-16 characters. The whole-message model flagged 5.4% of the ordinary ones (我很自卑 0.97, 停不下来 0.94)."""
    frame = load(ROOT / "data" / "dev" / "counselling_chat_short_dev.csv")
    recall, false_positive_rate = rates(frame)
    assert recall >= 0.95 and false_positive_rate <= 0.04, f"recall {recall:.3f}, false-positive rate {false_positive_rate:.3f}"


def test_detector_on_denials_it_never_saw():
    """crisis_denial_holdout: 150 + 150 written blind (denials, look-alikes, crises hidden behind a denial or phrased
    with negations), scored once on the session-start detector and once after denials were taken out: 0.940 / 0.320 ->
    0.933 / 0.187 (denials 0.480 -> 0.280; bench/README.md)."""
    frame = load(ROOT / "data" / "tests" / "crisis_denial_holdout.csv")
    assert (frame.label == 1).sum() >= 150
    recall, false_positive_rate = rates(frame)
    assert recall >= 0.92 and false_positive_rate <= 0.2, f"recall {recall:.3f}, false-positive rate {false_positive_rate:.3f}"


def test_a_plain_denial_rarely_gets_a_referral_and_a_crisis_behind_one_is_still_found():
    """data/dev/crisis_denial_dev*.csv (development, 700 + 700): denials (我没有想过自杀，只是…), look-alike words, and
    crises phrased with negations or hidden behind a denial. dev2-dev4 were written blind and each scored once before
    its errors were read (bench/README.md). The session-start detector: recall 0.953, false alarms 0.277 (denials
    0.482); taking plain denials out: 0.956 / 0.124 (denials 0.200)."""
    import glob

    frame = pd.concat([load(path) for path in sorted(glob.glob(str(ROOT / "data" / "dev" / "crisis_denial_dev*.csv")))])
    assert len(frame) >= 1400
    recall, false_positive_rate = rates(frame)
    assert recall >= 0.95 and false_positive_rate <= 0.14, f"recall {recall:.3f}, false-positive rate {false_positive_rate:.3f}"


def test_chat_finds_a_risk_told_over_several_messages():
    """crisis_dialogue_holdout: 80 + 80 dialogues of 2-4 user messages, written blind; label: the reply to the last
    message needs the referral. 44 crisis dialogues have no message that shows the risk alone. The last message alone
    finds 41%; with the user's three before it (crisis_in_latest, what chat.py does) 98.8%, at 19% false alarms on
    dialogues built so that one message alone sounds alarming (bench/README.md)."""
    import json

    from prep.safety import crisis_in_latest

    lines = (ROOT / "data" / "tests" / "crisis_dialogue_holdout.jsonl").read_text(encoding="utf-8").splitlines()
    dialogues = [json.loads(line) for line in lines if line.strip()]
    labels = pd.Series([d["label"] for d in dialogues])
    alone = pd.Series([detect_crisis(d["user_turns"][-1]).crisis for d in dialogues])
    latest = pd.Series([crisis_in_latest(d["user_turns"]) for d in dialogues])
    assert latest[labels == 1].mean() >= 0.95 and latest[labels == 0].mean() <= 0.22
    assert alone[labels == 1].mean() <= 0.6  # the set needs the earlier messages: it tests what it says


def test_detector_meets_the_targets_over_all_blind_sets():
    frame = pd.concat([load(ROOT / "data" / "tests" / name) for name in BLIND_SETS])
    recall, false_positive_rate = rates(frame)
    assert recall >= 0.95 and false_positive_rate <= 0.05, f"recall {recall:.3f}, false-positive rate {false_positive_rate:.3f}"


@pytest.mark.parametrize("name", BLIND_SETS)
def test_classifier_catches_what_the_lexicon_misses(name):
    frame = load(ROOT / "data" / "tests" / name)
    lexicon_recall, _ = rates(frame, use_model=False)
    recall, _ = rates(frame)
    assert recall >= lexicon_recall + 0.2, f"lexicon {lexicon_recall:.3f}, with the classifier {recall:.3f}"


def test_classifier_learns_its_training_sets():
    frame = pd.concat([load(path) for path in sorted((ROOT / "data" / "safety").glob("*.csv"))])
    assert len(frame) >= 1500
    predicted = frame.text.map(crisis_score) >= THRESHOLD
    assert predicted[frame.label == 1].mean() >= 0.95 and predicted[frame.label == 0].mean() <= 0.05


def test_a_crisis_message_inside_a_long_one_is_still_found():
    """Each blind crisis message with two ordinary messages from the blind sets before and after it (~120
    characters): judged only whole, its n-grams were diluted and 27% were found; the detector also judges
    windows of two neighbouring sentences (55%), under the whole message's discounts. Ordinary messages joined five at
    a time are the false-alarm side (each part alone fires 4% of the time, so five joined would fire about 19% of
    the time if sent one by one). The same messages typed with commas only, as on a phone, were found 28% of the
    time when only full stops made windows; in pieces cut at the commas, 59%. Over the eleven blind sets today: 61% and
    64%, false alarms 8.2% and 8.5%."""
    import random
    import re

    frame = pd.concat([load(ROOT / "data" / "tests" / name) for name in BLIND_SETS])
    crisis, ordinary = list(frame.text[frame.label == 1]), list(frame.text[frame.label == 0])
    rng = random.Random(0)
    joined = lambda texts: "".join(text.rstrip("。！？!?") + "。" for text in texts)
    long_crisis = [joined(rng.sample(ordinary, 2)) + text + joined(rng.sample(ordinary, 2)) for text in crisis]
    long_ordinary = [joined(rng.sample(ordinary, 5)) for _ in crisis]
    commas_only = lambda texts: [re.sub(r"[。！？!?.；;\n]+", "，", text).rstrip("，") for text in texts]
    for style, (crises, ordinaries, floor) in {"full stops": (long_crisis, long_ordinary, 0.5),
                                                "commas only": (commas_only(long_crisis), commas_only(long_ordinary), 0.55)}.items():
        recall = sum(result.crisis for result in detect_crises(crises)) / len(crises)
        false_alarms = sum(result.crisis for result in detect_crises(ordinaries)) / len(ordinaries)
        assert recall >= floor and false_alarms <= 0.09, f"{style}: recall {recall:.3f}, false alarms {false_alarms:.3f}"
