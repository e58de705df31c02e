"""The report's pieces on hand-made results: the results table, soup health, example responses, the training
diagnostics it leaves out, and the terminal's tables at 80 columns."""

import json
import re

import pytest

from salsa.report import (
    Block,
    _html,
    _markdown,
    comparison_rows,
    example_responses,
    print_summary,
    results_comparisons,
    soup_health_tables,
)

ONE_SEED = "1 seed, fewer than the 5 the design pre-registers (eval.verdict_min_seeds)"


def comparison(a, b, split="in_distribution", judge="gold", difference=(0.12, -0.01, 0.25), rate=(0.6, 0.51, 0.69),
               claim="unresolved", reason=ONE_SEED, **extra):  # fmt: skip
    return {"a": a, "b": b, "split": split, "judge": judge, "mean_difference": difference[0], "win_rate": rate[0],
            "ci": {"mean_difference": list(difference[1:]), "win_rate": list(rate[1:])}, "claim": claim,
            "claim_reason": reason, **extra}  # fmt: skip


def test_the_results_table_puts_the_headline_first_then_its_pair_then_each_policy_against_sft():
    reason = "5 seeds: the interval excludes 0 below, t-test p = 0.010"
    headline = comparison("salsa", "ppo", difference=(-0.11, -0.205, -0.015), rate=(0.4, 0.31, 0.495),
                          claim="contradicted", reason=reason)  # fmt: skip
    comparisons = [
        comparison("salsa", "sft"), comparison("salsa", "ppo", split="out_of_distribution"),
        comparison("ppo", "sft", judge="reward"), headline, comparison("salsa@kl0.1", "ppo@kl0.1"),
        comparison("salsa", "ppo", matched_kl=True), comparison("salsa", "sft", judge="llm"),
    ]  # fmt: skip
    main, others = results_comparisons(comparisons, dict(headline))  # an equal copy, as summary.json holds it
    assert main == [headline, comparisons[1], comparisons[0], comparisons[6], comparisons[2]]
    assert others == [comparisons[4], comparisons[5]]
    rows, notes = comparison_rows(main)
    assert rows[0] == ["A vs B", "prompts", "judge", "mean A - B [CI]", "win rate [CI]", "verdict"]
    assert rows[1] == ["salsa vs ppo", "in-distribution", "gold judge", "-0.110 [-0.205, -0.015]",
                       "40.0% [31.0%, 49.5%]", "contradicted¹"]  # fmt: skip
    assert rows[2][1:] == ["out-of-distribution", "gold judge", "+0.120 [-0.010, +0.250]", "60.0% [51.0%, 69.0%]",
                           "unresolved²"]  # fmt: skip
    assert [row[-1] for row in rows[3:]] == ["unresolved²"] * 3  # each reason once, in the notes
    assert notes == [f"¹ {headline['claim_reason']}", f"² {ONE_SEED}"]
    assert comparison_rows(main, short=True)[0][2][1:3] == ["OOD", "gold"]
    assert results_comparisons(comparisons, None) == ([], comparisons)


def _health() -> dict:
    """Two ingredients and their soup; each KL its own value, so that a transposed table shows."""
    members = ["ingredient-0", "ingredient-1", "soup"]
    kl = {f"{a}||{b}": {"mean": 0.1 * i + 0.1, "ci": [0.1 * i, 0.1 * i + 0.2]}
          for i, (a, b) in enumerate((a, b) for a in members for b in members if a != b)}  # fmt: skip
    versus = [comparison("soup", "ingredient-0", judge="gold", difference=(-0.2, -0.3, -0.1), rate=(0.0, 0.0, 0.1)),
              comparison("soup", "ingredient-1", judge="reward")]  # fmt: skip
    return {"members": members, "kl": kl, "comparisons": versus, "closest_ingredients_kl": 0.1, "threshold": 1.0,
            "distinct": False}  # fmt: skip


def test_soup_health_is_a_kl_table_by_member_and_a_table_of_the_soup_against_each_ingredient():
    kl, versus = soup_health_tables(_health())
    assert kl == [
        ["KL(row || column)", "ingredient-0", "ingredient-1", "soup"],
        ["ingredient-0", "-", "0.10 [0.00, 0.20]", "0.20 [0.10, 0.30]"],
        ["ingredient-1", "0.30 [0.20, 0.40]", "-", "0.40 [0.30, 0.50]"],
        ["soup", "0.50 [0.40, 0.60]", "0.60 [0.50, 0.70]", "-"],
    ]
    assert "| KL(row \\|\\| column) | ingredient-0 |" in _markdown([Block("table", kl)])  # not a column break
    assert versus == [
        ["soup vs", "judge", "mean soup - ingredient [CI]", "win rate [CI]"],
        ["ingredient-0", "gold judge", "-0.200 [-0.300, -0.100]", "0.0% [0.0%, 10.0%]"],
        ["ingredient-1", "reward model", "+0.120 [-0.010, +0.250]", "60.0% [51.0%, 69.0%]"],
    ]


def _samples(path, policies, prompts=10):
    """Every policy's answers: 2 RL seeds x 2 samples per prompt, both splits, plus snapshot and sweep rows that are
    not examples. Each response names who answered what, with which seed and sample."""
    rows = []
    for policy in policies:
        for seed in (0, 1):
            for split in ("in_distribution", "out_of_distribution"):
                for index in range(prompts):
                    for sample in (0, 1):
                        response = f"{policy} answers {split} {index} with seed {seed} sample {sample}"
                        rows.append({"policy": policy, "seed_index": seed, "split": split, "index": index,
                                     "sample": sample, "prompt": f"<b>prompt</b> {split} {index} & more",
                                     "response": response + (" <script>x()</script> ```" if policy == "ppo" else ""),
                                     "gold": 0.5, "reward": -1.25})  # fmt: skip
    for row in rows:  # a chat prompt (its turns) for prompt 5
        if row["index"] == 5:
            row["prompt"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": row["prompt"]}]
    rows.append({**rows[0], "snapshot": 1, "response": "a snapshot's answer"})
    rows.append({**rows[0], "sweep": "rl-expo", "response": "a sweep's answer"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_examples_are_the_same_prompts_and_sample_for_every_policy_spread_over_the_prompts(tmp_path):
    samples = tmp_path / "samples.jsonl"
    _samples(samples, ["salsa", "ppo", "sft"])
    results = {"judges": ["gold", "reward", "llm"], "settings": {"prompts": {"in_distribution": 10}},
               "policies": {"salsa": {}, "ppo": {}, "sft": {}, "rl-expo@2": {"merge": {}}}}  # fmt: skip
    examples = example_responses(samples, results)
    assert [e["index"] for e in examples] == [1, 5, 8]  # the middles of three equal thirds of 10 prompts
    for example in examples:
        i = example["index"]
        chat = "Be brief.\n" if i == 5 else ""  # a chat prompt shown as its turns, one per line
        assert example["prompt"] == f"{chat}<b>prompt</b> in_distribution {i} & more"
        assert [(p, r.split(" <")[0], s) for p, r, s in example["responses"]] == [
            (p, f"{p} answers in_distribution {i} with seed 0 sample 0", {"gold": 0.5, "reward": -1.25})
            for p in ("salsa", "ppo", "sft")
        ]
    page = _html([Block("example", examples[0])], "t")
    assert "&lt;b&gt;prompt&lt;/b&gt; in_distribution 1 &amp; more" in page and "<b>" not in page
    assert "&lt;script&gt;x()&lt;/script&gt;" in page and "<script>" not in page
    assert "<td>+0.500</td><td>-1.250</td>" in page
    markdown = _markdown([Block("example", examples[0])])
    assert "````\nppo answers in_distribution 1 with seed 0 sample 0 <script>x()</script> ```\n````" in markdown
    assert example_responses(tmp_path / "absent.jsonl", results) == []


def _training(clip, approx_kl):
    """Two runs' frontier and diagnostics over three updates; clip fraction and approx. KL as given, for both."""
    frontier = {"step": [0, 1, 2, 3], "gold": [0.1, 0.2, 0.3, 0.4], "kl_sft": [0.0, 0.1, 0.2, 0.3]}
    diagnostics = {"step": [1, 2, 3], "clip_fraction": clip, "approx_kl": approx_kl, "entropy": [2.0, 1.9, 1.8]}
    return {"frontier": {"salsa": frontier, "ppo": frontier}, "diagnostics": {"salsa": diagnostics,
            "ppo": {**diagnostics, "clip_fraction": [0.0, 0.0, 0.0], "approx_kl": [0.0, 0.0, 0.0]}}}  # fmt: skip


@pytest.mark.parametrize(
    ("clip", "approx_kl", "why"),
    [([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], "one gradient step per rollout"),
     ([0.0, 0.0, 0.0], [0.0, 1e-5, 2e-5], "the ratio never left the clip range"),
     ([0.0, 0.01, 0.0], [0.0, 1e-5, 2e-5], None)],
)  # fmt: skip
def test_the_ratio_panels_that_are_zero_throughout_are_one_line_saying_why(clip, approx_kl, why):
    from salsa.plots import flat_ratio_text, training_panels

    results = _training(clip, approx_kl)
    drawn = {keys[0] for _, _, keys in training_panels(results)}
    flat = {k for k, values in (("clip_fraction", clip), ("approx_kl", approx_kl)) if not any(values)}
    assert drawn == {"gold", "kl_sft", "entropy", "clip_fraction", "approx_kl"} - flat
    text = flat_ratio_text(results)
    if why is None:
        assert text is None
    else:
        assert text.startswith("Training curves not drawn: clip fraction") and why in text
        assert ("approx. KL" in text) is ("approx_kl" in flat)


NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?%?")


@pytest.mark.parametrize("width", [80, 60])
def test_the_terminal_tables_never_cut_a_number_at_80_columns(width, tmp_path, monkeypatch):
    from rich.console import Console

    import salsa.report
    from salsa.report import _policy_rows_short

    wide = dict(difference=(-0.111, -0.2054, -0.0153), rate=(1.0, 1.0, 1.0), claim="contradicted")
    headline = comparison("init-soup@kl0.02", "ref-soup@kl0.02", **wide)
    comparisons = [headline] + [comparison(a, b, split=split, judge=judge, **wide)
                                for a, b in (("init-soup@kl0.02", "ref-soup@kl0.02"), ("init-soup@kl0.02", "sft"))
                                for split in ("in_distribution", "out_of_distribution")
                                for judge in ("gold", "reward", "llm")][1:]  # fmt: skip
    score = {"mean": -0.1234, "ci": [-0.2345, -0.0123]}
    policy = {"splits": {s: {"gold": score, "reward": score, "length": score}
                         for s in ("in_distribution", "out_of_distribution")},
              "kl_sft": {"mean": 12.345, "ci": [-10.5, 14.25]}, "kl_soup": {"mean": 1.0, "ci": [0.5, 1.5]}}  # fmt: skip
    summary = {"comparisons": comparisons, "headline": headline, "verdict": "contradicted",
               "verdict_text": "init-soup@kl0.02 beats ref-soup@kl0.02: **contradicted**", "against_sft": [],
               "policies": {"init-soup@kl0.02": policy, "sft": policy}, "judges": ["gold", "reward", "llm"],
               "confidence": 0.95}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    console = Console(width=width, record=True)
    monkeypatch.setattr(salsa.report, "console", console)
    print_summary(tmp_path)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width and "…" not in text
    assert "\nreport: " in text  # where the report is (test_documented_commands expects it)
    printed = NUMBER.findall(text)
    rows = comparison_rows(results_comparisons(comparisons, headline)[0], short=True)[0]
    cells = [cell for row in rows[1:] + _policy_rows_short(summary["policies"], summary["judges"])[1:] for cell in row]
    numbers = [n for cell in cells for n in NUMBER.findall(cell)]
    assert "-0.205" in numbers and "100.0%" in numbers and "12.35" in numbers and "[-10.50," in " ".join(cells)
    missing = [n for n in numbers if n not in printed]
    assert not missing, f"cut at {width} columns: {missing}\n{text}"
    if width == 80:  # and each interval on one line, with its estimate: a row of the results table is a line
        assert all(cell in text for row in rows[1:] for cell in row[3:5]), text


def test_a_judge_that_scores_one_split_only_has_a_dash_on_the_others():
    """The task's gold judge scores the task's prompts, not a standard set's (eval.ood_prompts: ifeval), and IFEval's
    rules only IFEval's: each policy table shows a judge where it scored and "-" elsewhere (it raised KeyError)."""
    from salsa.report import _policy_rows_short, _policy_table

    score = {"mean": 0.5, "ci": [0.25, 0.75]}
    ood = {"reward": score, "ifeval_prompt_strict": score, "length": score}
    policy = {
        "splits": {"in_distribution": {"gold": score, "reward": score, "length": score}, "out_of_distribution": ood}
    }
    judges = ["gold", "reward", "ifeval_prompt_strict"]
    results = {"settings": {"prompts": {"in_distribution": "prompts_eval.jsonl", "out_of_distribution": "ifeval"},
                            "temperature": 0.7}, "judges": judges, "policies": {"a": policy, "b": policy}}  # fmt: skip
    table = _policy_table(results)
    assert table[0][1:5] == ["gold (in-distribution)", "reward (in-distribution)", "reward (out-of-distribution)",
                             "ifeval_prompt_strict (out-of-distribution)"]  # fmt: skip
    assert table[1][1:5] == ["+0.500 [+0.250, +0.750]"] * 4
    short = _policy_rows_short(results["policies"], judges)
    assert short[1:4] == [["a", "gold", "+0.500 [+0.250, +0.750]", "-"],
                          ["", "reward", "+0.500 [+0.250, +0.750]", "+0.500 [+0.250, +0.750]"],
                          ["", "ifeval_prompt_strict", "-", "+0.500 [+0.250, +0.750]"]]  # fmt: skip
