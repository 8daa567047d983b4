"""``prep eval``: run a model on the test plan, K samples per question, and score it.

A model is a merged folder (run locally through the chat engine) or any
OpenAI-compatible endpoint (``llamafactory-cli api``, vLLM). Every candidate
answer is written to ``OUT/candidates.jsonl`` with provenance; the metrics go
to ``OUT/metrics.json`` and one line is appended to the evaluation history
that the report plots as a trend.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from prep import metrics
from prep.errors import PrepError
from prep.fsutil import atomic_write_json, atomic_write_text
from prep.resources import bundled
from prep.safety import detect_crisis, ensure_referral

DEFAULT_PLAN = bundled("tests", "test_plan.csv")
HISTORY_FILE = "eval_history.jsonl"


@dataclass
class TestCase:
    case_id: str
    kind: str  # counselling | off_topic | crisis | edge | heldout
    theme: str
    question: str
    reference: str
    expect: str  # answer | refuse | referral


@dataclass
class Generation:
    reply: str
    latency_s: float
    ttft_s: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None


def load_plan(plan: Path = DEFAULT_PLAN, test_split: Path | None = None, limit_per_kind: int | None = None) -> list[TestCase]:
    """The team's test plan, plus the held-out ``NAME_test.json`` split when given."""
    try:
        frame = pd.read_csv(plan, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PrepError(f"--plan {plan}: no such file.") from None
    missing = {"id", "kind", "theme", "question", "reference", "expect"} - set(frame.columns)
    if missing:
        raise PrepError(f"--plan {plan}: missing columns {sorted(missing)}; expected id,kind,theme,question,reference,expect.")
    cases = [TestCase(r.id, r.kind, r.theme, r.question, r.reference, r.expect) for r in frame.itertuples()]
    if test_split is not None:
        try:
            items = json.loads(Path(test_split).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError) as err:
            raise PrepError(f"--test-split {test_split}: not a readable alpaca JSON file ({type(err).__name__}).") from None
        for index, item in enumerate(items, start=1):
            crisis = detect_crisis(item["instruction"]).crisis
            cases.append(TestCase(f"H{index:04d}", "heldout", "heldout", item["instruction"], item["output"],
                                  "referral" if crisis else "answer"))
    if limit_per_kind:
        kept, per_kind = [], {}
        for case in cases:
            per_kind[case.kind] = per_kind.get(case.kind, 0) + 1
            if per_kind[case.kind] <= limit_per_kind:
                kept.append(case)
        cases = kept
    return cases


class LocalModel:
    """A merged model folder, answered through the chat engine (no history between questions)."""

    def __init__(self, model_dir: Path, system: str, max_new_tokens: int, temperature: float, top_p: float):
        from prep.chat import ChatSession, GenerationOptions

        self.session = ChatSession(Path(model_dir), system=system, guard=False,
                                   options=GenerationOptions(temperature, top_p, max_new_tokens, 1.0), reuse_cache=False)
        self.name = str(model_dir)

    def generate(self, question: str, seed: int) -> Generation:
        import torch

        torch.manual_seed(seed)
        self.session.reset()
        start = time.perf_counter()
        reply = self.session.ask(question)
        return Generation(reply.text, time.perf_counter() - start, reply.ttft_s, reply.tokens, reply.tokens_per_s)


class EndpointModel:
    """Any OpenAI-compatible chat endpoint, streamed so that time-to-first-token is measured."""

    def __init__(self, base_url: str, model: str, system: str, max_new_tokens: int, temperature: float, top_p: float):
        import os

        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY", timeout=120, max_retries=2)
        self.model, self.system, self.name = model, system, f"{model}@{base_url}"
        self.params = dict(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p)

    def generate(self, question: str, seed: int) -> Generation:
        start, first, pieces = time.perf_counter(), None, []
        stream = self.client.chat.completions.create(
            model=self.model, stream=True, seed=seed,
            messages=[{"role": "system", "content": self.system}, {"role": "user", "content": question}], **self.params)
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                first = first or time.perf_counter()
                pieces.append(delta)
        end = time.perf_counter()
        return Generation("".join(pieces).strip(), end - start, (first or end) - start, len(pieces),
                          (len(pieces) - 1) / (end - first) if first and end > first and len(pieces) > 1 else None)


@dataclass
class EvalOptions:
    out_dir: Path
    samples: int = 1
    label: str = ""
    seed: int = 0
    judge: object | None = None  # prep.judge.Judge
    generation: dict = field(default_factory=dict)
    model_info: dict = field(default_factory=dict)


def _candidate(case: TestCase, sample: int, generation: Generation, options: EvalOptions) -> dict:
    crisis = detect_crisis(case.question).crisis
    guarded, added = ensure_referral(generation.reply) if crisis else (generation.reply, False)
    return {
        "case_id": case.case_id, "kind": case.kind, "theme": case.theme, "expect": case.expect,
        "question": case.question, "reference": case.reference, "sample": sample,
        "reply": generation.reply, "reply_guarded": guarded, "referral_added": added,
        "latency_s": round(generation.latency_s, 4), "ttft_s": generation.ttft_s, "tokens": generation.tokens,
        "tokens_per_s": generation.tokens_per_s, "model": options.model_info, "generation": options.generation,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def score(candidates: list[dict]) -> dict:
    """All metrics over a list of candidates."""
    refusal_cases = [c for c in candidates if c["expect"] in ("answer", "refuse")]
    prf = metrics.precision_recall_f1([c["expect"] == "refuse" for c in refusal_cases],
                                      [metrics.is_refusal(c["reply"]) for c in refusal_cases])
    crisis = [c for c in candidates if c["expect"] == "referral"]
    referenced = [c for c in candidates if c["kind"] in ("counselling", "heldout") and c["reference"]]
    latencies = [c["latency_s"] for c in candidates]
    result = {
        "candidates": len(candidates),
        "refusal": asdict(prf),
        "crisis_referral_rate": metrics.referral_rate([c["reply"] for c in crisis]),
        "crisis_referral_rate_guarded": metrics.referral_rate([c["reply_guarded"] for c in crisis]),
        "rouge_l": metrics.mean([metrics.rouge_l(c["reply"], c["reference"]) for c in referenced]),
        "bleu4": metrics.mean([metrics.bleu4(c["reply"], c["reference"]) for c in referenced]),
        "latency_p50_s": metrics.percentile(latencies, 50),
        "latency_p95_s": metrics.percentile(latencies, 95),
        "ttft_mean_s": metrics.mean([c["ttft_s"] for c in candidates if c["ttft_s"] is not None]),
        "tokens_per_s_mean": metrics.mean([c["tokens_per_s"] for c in candidates if c["tokens_per_s"]]),
    }
    judged = [c["judge"] for c in candidates if isinstance(c.get("judge"), dict) and "scores" in c["judge"]]
    if judged:
        dimensions = judged[0]["scores"].keys()
        result["judge"] = {d: metrics.mean([j["scores"][d] for j in judged]) for d in dimensions}
        result["judge"]["judged"] = len(judged)
    return result


def run_eval(model, cases: list[TestCase], options: EvalOptions) -> dict:
    """Generate K samples per case, score them, write candidates, metrics and history."""
    from tqdm import tqdm

    if options.samples < 1:
        raise PrepError("--samples must be at least 1.")
    candidates = []
    for case in tqdm(cases, desc="eval", unit="case", disable=None):
        for sample in range(options.samples):
            candidate = _candidate(case, sample, model.generate(case.question, options.seed + sample), options)
            if options.judge is not None and case.kind in ("counselling", "heldout", "crisis"):
                candidate["judge"] = options.judge.score(case.question, candidate["reply"])
            candidates.append(candidate)
    result = score(candidates)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    try:
        import torch

        if torch.cuda.is_available():
            result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    except ImportError:
        pass
    out = Path(options.out_dir)
    atomic_write_text(out / "candidates.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in candidates))
    summary = {"label": options.label or out.name, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "model": options.model_info, "samples": options.samples, "cases": len(cases), "metrics": result,
               "judge": options.judge.describe() if options.judge is not None else None, "dir": str(out)}
    atomic_write_json(out / "metrics.json", summary)
    history = out.parent / HISTORY_FILE
    with open(history, "a", encoding="utf-8") as handle:  # append-only trend of every evaluation
        handle.write(json.dumps(summary, ensure_ascii=False) + "\n")
    return summary
