"""``prep eval``: run a model on the test plan, K samples per question, and score it.

A model is a merged folder (run locally through the chat engine) or any
OpenAI-compatible endpoint (``llamafactory-cli api``, vLLM). Every candidate
answer is written to ``OUT/candidates.jsonl`` with provenance; the metrics go
to ``OUT/metrics.json`` and one line is appended to the evaluation history
that the report plots as a trend.
"""

from __future__ import annotations

import io
import json
import os
import resource
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from prep import metrics
from prep.contamination import is_trained_on, trained_questions
from prep.errors import PrepError
from prep.fsutil import atomic_write_json, atomic_write_text, nearest_existing
from prep.readers import read_path
from prep.readers.decode import lines_of, read_input
from prep.records import Conversation, Rejected
from prep.resources import bundled
from prep.safety import crises_in_dialogues, ensure_referral

DEFAULT_PLAN = bundled("tests", "test_plan.csv")
HISTORY_FILE = "eval_history.jsonl"
PARTIAL_FILE = "candidates.partial.jsonl"  # each answer as it is generated: an interrupted eval resumes from it
EXPECTATIONS = ("answer", "refuse", "referral")
PLAN_KINDS = ("counselling", "off_topic", "crisis", "edge")  # (held-out items are "heldout")
PLAN_COLUMNS = "id,kind,theme,question,reference,expect"


@dataclass
class TestCase:
    case_id: str
    kind: str  # counselling | off_topic | crisis | edge | heldout
    theme: str
    question: str
    reference: str
    expect: str  # answer | refuse | referral
    history: list[list[str]] = field(default_factory=list)  # earlier [question, answer] pairs of a held-out dialogue
    system: str | None = None  # a held-out item's own system prompt

    def messages(self, default_system: str) -> list[dict]:
        """The request: the system prompt, the earlier turns and the question."""
        system = self.system or default_system
        earlier = [{"role": role, "content": text} for pair in self.history for role, text in zip(("user", "assistant"), pair)]
        return ([{"role": "system", "content": system}] if system else []) + earlier + [{"role": "user", "content": self.question}]

    def user_turns(self) -> list[str]:
        """Everything the user said, for the crisis detector: a crisis two turns back is still a crisis."""
        return [pair[0] for pair in self.history] + [self.question]


@dataclass
class Generation:
    reply: str
    latency_s: float
    ttft_s: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None


def load_plan(plan: Path = DEFAULT_PLAN, test_split: Path | None = None, limit_per_kind: int | None = None) -> list[TestCase]:
    """The team's test plan, plus the held-out ``NAME_test.json`` split when given."""
    if limit_per_kind is not None and limit_per_kind < 1:
        raise PrepError(f"--limit {limit_per_kind}: expected at least 1 case of each kind (leave it out for all).")
    cases = _plan_cases(plan)
    if not cases and test_split is None:
        raise PrepError(f"--plan {plan}: no questions, only the header row; expected at least one row of {PLAN_COLUMNS}.")
    cases += _held_out_cases(test_split) if test_split is not None else []
    if limit_per_kind:
        kept, per_kind = [], {}
        for case in cases:
            per_kind[case.kind] = per_kind.get(case.kind, 0) + 1
            if per_kind[case.kind] <= limit_per_kind:
                kept.append(case)
        cases = kept
    return cases


def _plan_cases(plan: Path) -> list[TestCase]:
    try:
        frame = pd.read_csv(io.StringIO(read_input(plan, "--plan")), dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise PrepError(f"--plan {plan}: not a CSV table ({str(err).splitlines()[0]}); expected {PLAN_COLUMNS}.") from None
    missing = set(PLAN_COLUMNS.split(",")) - set(frame.columns)
    if missing:
        raise PrepError(f"--plan {plan}: missing columns {sorted(missing)}; expected {PLAN_COLUMNS}.")
    _check_rows(plan, frame)
    return [TestCase(r.id, r.kind, r.theme, r.question, r.reference, r.expect) for r in frame.itertuples()]


def _check_rows(plan: Path, frame: pd.DataFrame) -> None:
    """Refuse the first row that would be scored wrongly: a review decision applies to all answers of an id, and a
    kind the metrics do not know would leave the case out of ROUGE-L/BLEU and the judge without a word."""
    unique_id = "expected a unique id per question (one review decision applies to all answers of an id)"
    checks = [(frame.id.str.strip() == "", None, unique_id), (frame.id.duplicated(), None, unique_id),
              (~frame.kind.isin(PLAN_KINDS), "kind", f"expected one of {', '.join(PLAN_KINDS)}"),
              (~frame.expect.isin(EXPECTATIONS), "expect", f"expected one of {', '.join(EXPECTATIONS)}")]
    for bad, column, expected in checks:
        if bad.any():
            row = bad.idxmax()
            what = f"{column} '{frame[column][row]}' (id {frame.id[row]})" if column else "an empty or repeated id"
            raise PrepError(f"--plan {plan}: row {row + 2} has {what}; {expected}.")


def _held_out_cases(test_split: Path) -> list[TestCase]:
    """Held-out dialogues: the last question is asked with the earlier turns before it, its answer is the reference,
    a crisis anywhere in what the user said expects a referral, and a reference that declines expects a refusal."""
    records = list(read_path(test_split, origin="labelled"))
    rejected = next((r for r in records if isinstance(r, Rejected)), None)
    if rejected:
        raise PrepError(f"--test-split {test_split}: {rejected.provenance.location} is not a dialogue ({rejected.detail}); "
                        "expected the NAME_test.json that prep build writes (alpaca or sharegpt).")
    dialogues = [r for r in records if _asks_and_answers(r)]
    if dialogues and len(dialogues) < len(records):
        warnings.warn(f"--test-split {test_split}: {len(records) - len(dialogues)} of {len(records)} items left out "
                      "(they do not end with a question and its answer)", stacklevel=2)
    if not dialogues:
        raise PrepError(f"--test-split {test_split}: no dialogue that ends with a question and its answer; expected the "
                        "NAME_test.json that prep build writes.")
    cases = []
    user_turns = [[t.content for t in d.turns if t.role == "user"] for d in dialogues]
    for index, (dialogue, crisis) in enumerate(zip(dialogues, crises_in_dialogues(user_turns)), start=1):
        turns = [t.content for t in dialogue.turns]
        question, reference = turns[-2], turns[-1]
        expect = "referral" if crisis else "refuse" if metrics.is_refusal(reference) else "answer"
        cases.append(TestCase(f"H{index:04d}", "heldout", dialogue.category or "heldout", question, reference, expect,
                              [turns[i:i + 2] for i in range(0, len(turns) - 2, 2)], dialogue.system))
    return cases


def _asks_and_answers(record: Conversation) -> bool:
    roles = [t.role for t in record.turns]
    return len(roles) >= 2 and roles == ["user", "assistant"] * (len(roles) // 2) and all(t.content for t in record.turns[-2:])


class LocalModel:
    """A merged model folder, answered through the chat engine (no history between questions). Its settings are
    checked at once; the weights load when the evaluation starts, after its own inputs were checked."""

    def __init__(self, model_dir: Path, system: str, max_new_tokens: int, temperature: float, top_p: float):
        from prep.chat import GenerationOptions, check_model_dir

        self.options = GenerationOptions(temperature, top_p, max_new_tokens, 1.0)
        self.model_dir = check_model_dir(Path(model_dir))
        self.context_tokens = _context_tokens(self.model_dir, max_new_tokens)
        self.name, self.default_system, self.session = str(model_dir), system, None

    def load(self) -> None:
        """Load the model once (run_eval calls it when every other input is known to be good)."""
        from prep.chat import ChatSession

        if self.session is None:
            self.session = ChatSession(self.model_dir, system=self.default_system, guard=False, options=self.options,
                                       context_tokens=self.context_tokens, reuse_cache=False)

    def generate(self, case: TestCase, seed: int) -> Generation:
        import torch

        self.load()
        torch.manual_seed(seed)
        messages = case.messages(self.default_system)
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        if system != self.session.system:
            self.session.system = system
        self.session.reset()  # (prefills the system prompt)
        self.session.history = messages[1 if system else 0:-1]
        start = time.perf_counter()
        reply = self.session.ask(case.question)
        return Generation(reply.text, time.perf_counter() - start, reply.ttft_s, reply.tokens, reply.tokens_per_s)


def _context_tokens(model_dir: Path, max_new_tokens: int) -> int:
    """The tokens a prompt and its answer share, fitted to the window in config.json as the chat engine fits them.
    A --max-new-tokens that fills it is refused here, before the model loads, in prep eval's words."""
    from prep.chat import CONTEXT_TOKENS, fitted_context

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = {}  # (loading the model says what is wrong with it)
    config = config if isinstance(config, dict) else {}
    window = config.get("max_position_embeddings") or (config.get("text_config") or {}).get("max_position_embeddings")
    context = fitted_context(CONTEXT_TOKENS, window)
    if max_new_tokens >= context:
        raise PrepError(f"--max-new-tokens {max_new_tokens}: leaves no room for the question in the {context} tokens a "
                        f"question and its answer share (the model's window, at most {CONTEXT_TOKENS}); expected "
                        f"fewer than {context}.")
    return context


def local_model_info(model_dir: Path) -> dict:
    """What identifies a local model in the candidates: its folder, its run, and when its weights were written (a
    model merged again into the same folder is another model, whose answers a resumed evaluation must not reuse)."""
    manifest = Path(model_dir).parent / "run_manifest.json"
    if not manifest.exists():  # --model . (inside the merged folder): Path(".").parent is "." itself
        manifest = Path(model_dir).resolve().parent / "run_manifest.json"
    written = [f.stat().st_mtime for pattern in ("*.safetensors", "*.bin") for f in Path(model_dir).glob(pattern)]
    return {"model_dir": str(model_dir), "run_manifest": str(manifest) if manifest.exists() else None,
            "weights_written": datetime.fromtimestamp(max(written), timezone.utc).isoformat() if written else None}


class EndpointModel:
    """Any OpenAI-compatible chat endpoint, streamed so that time-to-first-token is measured."""

    def __init__(self, base_url: str, model: str, system: str, max_new_tokens: int, temperature: float, top_p: float):
        import os

        from openai import OpenAI

        from prep.chat import GenerationOptions

        GenerationOptions(temperature, top_p, max_new_tokens, 1.0)  # the same checks as for a local model, one sentence
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY", timeout=120, max_retries=2)
        self.model, self.system, self.name = model, system, f"{model}@{base_url}"
        self.params = dict(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p)

    def load(self) -> None:
        """Nothing to load: the endpoint serves the model."""

    def generate(self, case: TestCase, seed: int) -> Generation:
        start, first, pieces, counted = time.perf_counter(), None, [], None
        # The server's own token count when it sends one (include_usage: OpenAI, vLLM); the chunks otherwise, which
        # servers that stream a token per chunk (LLaMA-Factory's api) match and others only approximate.
        stream = self.client.chat.completions.create(model=self.model, stream=True, seed=seed, messages=case.messages(self.system),
                                                     stream_options={"include_usage": True}, **self.params)
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                first = first or time.perf_counter()
                pieces.append(delta)
            usage = getattr(chunk, "usage", None)
            counted = getattr(usage, "completion_tokens", None) or counted
        end = time.perf_counter()
        tokens = counted or len(pieces)
        return Generation("".join(pieces).strip(), end - start, (first or end) - start, tokens,
                          (tokens - 1) / (end - first) if first and end > first and tokens > 1 else None)


@dataclass
class EvalOptions:
    out_dir: Path
    samples: int = 1
    label: str = ""
    seed: int = 0
    judge: object | None = None  # prep.judge.Judge
    generation: dict = field(default_factory=dict)
    model_info: dict = field(default_factory=dict)


def _candidate(case: TestCase, sample: int, generation: Generation, options: EvalOptions, crisis: bool) -> dict:
    guarded, added = ensure_referral(generation.reply) if crisis else (generation.reply, False)
    return {
        "case_id": case.case_id, "kind": case.kind, "theme": case.theme, "expect": case.expect,
        "question": case.question, "history": case.history, "system": case.system, "reference": case.reference,
        "sample": sample, "crisis": crisis,
        "reply": generation.reply, "reply_guarded": guarded, "referral_added": added,
        "latency_s": round(generation.latency_s, 4), "ttft_s": generation.ttft_s, "tokens": generation.tokens,
        "tokens_per_s": generation.tokens_per_s, "model": options.model_info, "generation": options.generation,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def score(candidates: list[dict]) -> dict:
    """All metrics over a list of candidates."""
    refusal_cases = [c for c in candidates if c["expect"] in ("answer", "refuse")]
    prf = metrics.precision_recall_f1([c["expect"] == "refuse" for c in refusal_cases],
                                      [metrics.is_refusal(c["reply"]) for c in refusal_cases], undefined=None)  # 0/0: a gap
    crisis = [c for c in candidates if c["expect"] == "referral"]
    referenced = [c for c in candidates if c["kind"] in ("counselling", "heldout") and c["reference"]]
    latencies = [c["latency_s"] for c in candidates]
    result = {
        "candidates": len(candidates),
        **_trained_on(candidates, referenced),
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
    failed = [c["judge"]["error"] for c in candidates if isinstance(c.get("judge"), dict) and "error" in c["judge"]]
    if failed:
        result["judge_failed"] = {"replies": len(failed), "first_error": failed[0]}
    if judged:
        dimensions = judged[0]["scores"].keys()
        result["judge"] = {d: metrics.mean([j["scores"][d] for j in judged]) for d in dimensions}
        result["judge"]["judged"] = len(judged)
    return result


def _trained_on(candidates: list[dict], referenced: list[dict]) -> dict:
    """How many cases the model was trained on (prep.contamination; nothing when its training data is unknown) and
    ROUGE-L / BLEU-4 over the other cases: on trained ones they measure recall, not answers to new questions."""
    known = [c for c in candidates if c.get("trained_on") is not None]
    if not known:
        return {}
    unseen = [c for c in referenced if c.get("trained_on") is False]
    return {"trained_on_cases": len({c["case_id"] for c in known if c["trained_on"]}),
            "rouge_l_unseen": metrics.mean([metrics.rouge_l(c["reply"], c["reference"]) for c in unseen]),
            "bleu4_unseen": metrics.mean([metrics.bleu4(c["reply"], c["reference"]) for c in unseen])}


def run_eval(model, cases: list[TestCase], options: EvalOptions) -> dict:
    """Generate K samples per case, score them, write candidates, metrics and history.

    Each answer is also appended to ``OUT/candidates.partial.jsonl`` as it comes: after an interruption or an
    endpoint failure, the same command asks only what is still missing (same model, settings and questions)."""
    from tqdm import tqdm

    out = _checked_out_dir(cases, options)
    getattr(model, "load", lambda: None)()  # a local model loads now, its inputs checked
    out.mkdir(parents=True, exist_ok=True)
    done = _answers_so_far(out / PARTIAL_FILE, options)
    crises = crises_in_dialogues([case.user_turns() for case in cases])
    trained = trained_questions((options.model_info or {}).get("run_manifest"))
    candidates = []
    close_last_line(out / PARTIAL_FILE)  # a line cut by a crash stays one unreadable line, not two
    with open(out / PARTIAL_FILE, "a", encoding="utf-8") as journal:
        for case, crisis in tqdm(list(zip(cases, crises)), desc="eval", unit="case", disable=None):
            for sample in range(options.samples):
                candidate = done.get((case.case_id, sample))
                fresh = candidate is None or not _same_case(candidate, case, crisis)
                if fresh:
                    candidate = _candidate(case, sample, _generate(model, case, options.seed + sample, len(candidates), out), options, crisis)
                rejudge = options.judge is not None and case.kind in JUDGED_KINDS and not _judged_by(candidate.get("judge"), options.judge)
                if rejudge:
                    candidate["judge"] = options.judge.score(case.question, candidate["reply"])
                elif options.judge is None and "judge" in candidate:
                    candidate = {k: v for k, v in candidate.items() if k != "judge"}  # no judge this time: no old scores
                if fresh or rejudge:
                    journal.write(json.dumps(candidate, ensure_ascii=False) + "\n")
                    journal.flush()
                candidates.append({**candidate, "trained_on": is_trained_on(case.question, trained)})
    result = score(candidates)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    try:
        import torch

        if torch.cuda.is_available():
            result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    except ImportError:
        pass
    atomic_write_text(out / "candidates.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in candidates))
    summary = {"label": options.label or folder_name(out), "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "model": options.model_info, "samples": options.samples, "cases": len(cases), "metrics": result,
               "judge": options.judge.describe() if options.judge is not None else None, "dir": str(out.resolve())}
    atomic_write_json(out / "metrics.json", summary)
    append_history(history_path(out), summary)
    (out / PARTIAL_FILE).unlink(missing_ok=True)
    return summary


def _checked_out_dir(cases: list[TestCase], options: EvalOptions) -> Path:
    """The evaluation folder, once the run's own inputs are known to be good (before the model is asked anything)."""
    if options.samples < 1:
        raise PrepError(f"--samples {options.samples}: expected at least 1 answer per question.")
    if not cases:
        raise PrepError(f"no questions to ask; expected a --plan with at least one row of {PLAN_COLUMNS}, or a --test-split.")
    out = Path(options.out_dir)
    if out.exists() and not out.is_dir():
        raise PrepError(f"--out {out}: is a file; expected a folder for candidates.jsonl, metrics.json and the report.")
    # Found now, not after a model has loaded and answered: --out itself and the folder of the trend file next to it.
    for folder in (out, history_path(out).parent):
        existing = nearest_existing(folder)
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise PrepError(f"--out {out}: cannot be written ({existing} is {'not a folder' if not existing.is_dir() else 'not writable'}); "
                            f"expected a folder this user may write for candidates.jsonl, metrics.json and the report, in a "
                            f"folder it may write for the trend ({HISTORY_FILE}).")
    return out


def folder_name(folder: Path) -> str:
    """A folder's own name, also when it is given as "." or ".." (whose Path.name is "" or "..")."""
    resolved = Path(folder).resolve()
    return resolved.name or str(resolved)


def history_path(eval_dir: Path) -> Path:
    """The trend file the evaluations next to ``eval_dir`` share: in its parent, also for ``--out .`` (whose
    Path.parent is "." itself); lexically, so a symlinked folder keeps the trend where it was."""
    return Path(os.path.abspath(eval_dir)).parent / HISTORY_FILE


JUDGED_KINDS = ("counselling", "heldout", "crisis")
CASE_FIELDS = ("kind", "theme", "expect", "question", "reference", "history", "system")


def _answers_so_far(journal: Path, options: EvalOptions) -> dict[tuple, dict]:
    """The answers an interrupted run already has from the same model (folder and weights, or endpoint) with the
    same generation settings, the newest per case and sample."""
    if not journal.is_file():
        return {}
    done = {}
    for candidate in own_json_lines(journal):
        if (isinstance(candidate, dict) and candidate.get("model") == options.model_info
                and candidate.get("generation") == options.generation):
            done[(candidate.get("case_id"), candidate.get("sample"))] = candidate
    return done


def _same_case(candidate: dict, case: TestCase, crisis: bool) -> bool:
    """Whether an earlier answer was to this very case: an edited plan (another reference or expectation, the same
    id) or another crisis verdict asks again."""
    return all(candidate.get(name) == getattr(case, name) for name in CASE_FIELDS) and candidate.get("crisis") == crisis


def _judged_by(scored: object, judge) -> bool:
    """Whether a stored judge result is a usable score from this judge model and prompt (not a failure)."""
    from prep.judge import PROMPT_SHA256

    return (isinstance(scored, dict) and "scores" in scored and scored.get("judge_model") == judge.model
            and scored.get("prompt_sha256") == PROMPT_SHA256)


def _generate(model, case: TestCase, seed: int, finished: int, out: Path) -> Generation:
    """One answer; an endpoint that fails (after the client's retries) stops the evaluation with one sentence."""
    import openai

    try:
        return model.generate(case, seed)
    except openai.OpenAIError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PrepError(f"the model endpoint failed on case {case.case_id} ({type(err).__name__}: {reason[:200]}); "
                        f"the {finished} answers before it are kept in {out / PARTIAL_FILE}, and the same command "
                        "goes on from there.") from None


def close_last_line(path: Path) -> None:
    """End a file with a line break when its last line has none (a crash mid-write, a hand edit), so that what is
    appended next starts a line of its own; a missing or empty file is left as it is."""
    if not Path(path).is_file():
        return
    with open(path, "r+b") as handle:
        if handle.seek(0, 2):
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def append_history(path: Path, summary: dict) -> None:
    """Append one evaluation to the trend, never joined to a last line left without its line break."""
    close_last_line(path)
    with open(path, "ab") as handle:
        handle.write((json.dumps(summary, ensure_ascii=False) + "\n").encode("utf-8"))


def own_json_lines(path: Path) -> Iterator[object]:
    """The values of a JSON Lines file prep eval writes (the journal, the trend), None for a line that does not parse:
    decoded as UTF-8 leniently, so a line a crash cut inside a character is one unreadable line, not a reason to take
    the whole file for another encoding."""
    for line in lines_of(Path(path).read_bytes().decode("utf-8", errors="replace")):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                yield None


def read_history(path: Path) -> tuple[list[dict], int]:
    """The evaluations of the trend, the newest run of each folder in its latest place, and how many lines were
    not readable (skipped, not fatal: the trend is a convenience)."""
    if not path.is_file():
        return [], 0
    runs, unreadable = {}, 0
    for summary in own_json_lines(path):
        if not (isinstance(summary, dict) and isinstance(summary.get("metrics"), dict) and summary.get("label")):
            unreadable += 1
            continue
        key = str(Path(summary["dir"]).resolve()) if summary.get("dir") else summary["label"]
        runs.pop(key, None)
        runs[key] = summary
    return list(runs.values()), unreadable
