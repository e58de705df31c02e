"""`eval.sweeps`: families of merged policies (ExPO, LITI, SLERP), each point built in memory and evaluated like a
policy, drawn against KL to SFT in the report; and the rules a sweep must follow."""

import json

import pytest

from salsa.config import EvalConfig
from salsa.errors import SalsaError
from salsa.io import read_json, read_jsonl
from salsa.sweep_spec import sweep_points

POLICIES = {"sft": ["m/sft"], "ppo": ["m/ppo-0", "m/ppo-1"], "salsa": ["m/salsa-0", "m/salsa-1"], "other": ["m/o"]}
REFERENCES = {"sft_model": "m/sft", "soup_model": "m/soup"}


def test_a_sweep_names_its_points_and_pairs_the_models_seed_by_seed():
    sweeps = {
        "ppo-expo": {"method": "expo", "models": ["sft", "ppo"], "values": [0.5, 2]},
        "salsa-liti": {"method": "liti", "models": ["soup_model", "salsa"], "values": [0.25]},
        "rl-slerp": {"method": "slerp", "models": ["ppo", "salsa"], "values": [0.5]},
    }
    points = sweep_points(sweeps, POLICIES, REFERENCES)
    assert [p.name for p in points] == ["ppo-expo@0.5", "ppo-expo@2", "salsa-liti@0.25", "rl-slerp@0.5"]
    # The single SFT model pairs with every seed of ppo; two RL runs pair seed by seed.
    assert points[0].models == (("m/sft", "m/ppo-0"), ("m/sft", "m/ppo-1"))
    assert points[2].models == (("m/soup", "m/salsa-0"), ("m/soup", "m/salsa-1"))
    assert points[3].models == (("m/ppo-0", "m/salsa-0"), ("m/ppo-1", "m/salsa-1"))
    assert points[1].parameters == {"method": "expo", "expo_alpha": 2.0}
    assert points[2].parameters == {"method": "liti", "eta": 0.25}


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"method": "ties", "models": ["sft", "ppo"], "values": [0.5]},
         r"eval.sweeps.s.method must be one of expo, liti, slerp, got 'ties'"),
        ({"method": "expo", "models": ["sft", "dpo"], "values": [0.5]},
         r"eval.sweeps.s.models: 'dpo' is not one of sft, ppo, salsa, other, sft_model, soup_model \(the policies"),
        ({"method": "expo", "models": ["sft"], "values": [0.5]}, r"eval.sweeps.s.models must be two different names"),
        ({"method": "expo", "models": ["sft", "ppo"], "values": [0]},
         r"eval.sweeps.s.values must be > 0, got 0.0 \(to move back towards the first model, use liti\)"),
        ({"method": "liti", "models": ["sft", "ppo"], "values": [1.5]},
         r"eval.sweeps.s.values=1.5 lies outside \[0, 1\]; liti stays between the two models"),
        ({"method": "slerp", "models": ["sft", "ppo"], "values": []}, r"eval.sweeps.s.values must be a non-empty list"),
        ({"method": "slerp", "models": ["sft", "ppo"], "values": [0.5, 0.50]}, r"eval.sweeps.s.values must be disti"),
        ({"method": "slerp", "models": ["ppo", "salsa"], "values": ["half"]}, r"must be a non-empty list of numbers"),
        ({"method": "slerp", "models": ["sft", "ppo"]}, r"eval.sweeps.s: expected \{method, models, values\}"),
    ],
)  # fmt: skip
def test_a_sweep_that_breaks_a_rule_is_an_error_naming_its_field(sweep, message):
    with pytest.raises(SalsaError, match=message):
        sweep_points({"s": sweep}, POLICIES, REFERENCES)


def test_sweeps_whose_models_or_names_do_not_fit_are_refused():
    three = {**POLICIES, "ppo": ["a", "b", "c"]}
    slerp = {"method": "slerp", "models": ["ppo", "salsa"], "values": [0.5]}
    with pytest.raises(SalsaError, match="ppo has 3 models .seeds. and salsa 2; give equal numbers"):
        sweep_points({"s": slerp}, three, REFERENCES)
    with pytest.raises(SalsaError, match="'soup_model' is not one of sft, ppo, salsa, other \\(the policies"):
        sweep_points({"s": {**slerp, "models": ["soup_model", "ppo"]}}, POLICIES, {"soup_model": None})
    with pytest.raises(SalsaError, match="its point x@0.5 has the name of another policy"):
        sweep_points({"x": slerp}, {**POLICIES, "x@0.5": ["m"]}, REFERENCES)
    with pytest.raises(SalsaError, match="'a@b' cannot name a sweep"):
        sweep_points({"a@b": slerp}, POLICIES, REFERENCES)


def _prompts(path, texts):
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return str(path)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model_dir, tokenizer):
    """An evaluation of an SFT model, an RL policy of two seeds and another policy, with an ExPO, a LITI and a SLERP
    sweep over them, and its report."""
    from salsa.evaluate import evaluate
    from salsa.models import save_tiny_model
    from salsa.report import write_report

    root = tmp_path_factory.mktemp("swept")
    rl = [str(save_tiny_model(root / "models" / f"rl-{s}", tokenizer, seed=1 + s)) for s in range(2)]
    other = str(save_tiny_model(root / "models" / "other", tokenizer, seed=3))
    config = EvalConfig(
        policies={"sft": [str(tiny_model_dir)], "rl": rl, "other": [other]}, comparisons=["rl:sft"],
        prompts=_prompts(root / "prompts.jsonl", ["Review a cafe.", "Review a park.", "Review a shop."]),
        ood_prompts=None, reward_model=None, sft_model=str(tiny_model_dir), soup_model=None, matched_kl=False,
        max_new_tokens=4, bootstrap_samples=100, output_dir=str(root / "eval"),
        sweeps={
            "rl-expo": {"method": "expo", "models": ["sft", "rl"], "values": [0.5, 2]},
            "rl-liti": {"method": "liti", "models": ["sft", "rl"], "values": [1, 0.5]},
            "rl-slerp": {"method": "slerp", "models": ["rl", "other"], "values": [0.5]},
        },
    )  # fmt: skip
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    evaluate(config, show_progress=False)
    report = write_report(root / "eval")
    return root, before, report


def test_every_merged_point_is_evaluated_as_a_policy_with_the_same_seeds(swept):
    root, _, _ = swept
    results = read_json(root / "eval" / "results.json")
    points = ["rl-expo@0.5", "rl-expo@2", "rl-liti@1", "rl-liti@0.5", "rl-slerp@0.5"]
    assert list(results["policies"]) == ["sft", "rl", "other", *points]
    for name in points:
        entry = results["policies"][name]
        assert "gold" in entry["splits"]["in_distribution"] and entry["kl_sft"]["ci"][0] <= entry["kl_sft"]["mean"]
    sft, rl = results["policies"]["sft"]["paths"], results["policies"]["rl"]["paths"]
    merge = {"method": "expo", "value": 2.0, "models": [[sft[0], rl[0]], [sft[0], rl[1]]]}
    assert results["policies"]["rl-expo@2"]["merge"] == merge
    # LITI at eta = 1 is the RL policy itself, weight for weight: with the same prompts and seeds, seed by seed, it
    # answers exactly as the policy did (the same computation on the same weights, loaded alike).
    samples = read_jsonl(root / "eval" / "samples.jsonl")

    def answers(policy):
        return [(r["seed_index"], r["index"], r["response"]) for r in samples if r["policy"] == policy]

    assert answers("rl-liti@1") == answers("rl") and {s for s, _, _ in answers("rl-liti@1")} == {0, 1}
    kl = results["policies"]["rl-liti@1"]["kl_sft"]["mean"]
    assert kl == pytest.approx(results["policies"]["rl"]["kl_sft"]["mean"], abs=1e-4)
    # Points are not compared pairwise: only the configured comparison is.
    assert {(c["a"], c["b"]) for c in results["comparisons"]} == {("rl", "sft")}


def test_each_sweep_is_a_curve_through_its_points_and_the_policies_at_its_ends(swept):
    root, _, _ = swept
    sweeps = read_json(root / "eval" / "results.json")["sweeps"]
    assert sweeps["rl-expo"]["line"] == ["rl", "rl-expo@0.5", "rl-expo@2"]  # ExPO starts at B (alpha 0)
    assert sweeps["rl-liti"]["line"] == ["sft", "rl-liti@0.5", "rl-liti@1", "rl"]  # from A (eta 0) to B (eta 1)
    assert sweeps["rl-slerp"]["line"] == ["rl", "rl-slerp@0.5", "other"]
    assert sweeps["rl-liti"]["values"] == [0.5, 1.0] and sweeps["rl-liti"]["prompts"].endswith("prompts.jsonl")


def test_the_report_draws_the_merges_against_kl_and_says_to_choose_on_a_dev_split(swept):
    root, before, report = swept
    markdown = (report / "report.md").read_text()
    assert (report / "merges.png").is_file() and "![Merged policies: score against KL" in markdown
    assert "**Merges of the policies**" in markdown and "Choose a point on a dev split" in markdown
    assert str(root / "prompts.jsonl") in markdown and "| rl-expo@0.5 |" in markdown
    # Built in memory: nothing but the evaluation and its report was written.
    after = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert {p.parts[0] for p in set(after) - set(before)} == {"eval", "report"}


def test_salsa_run_sweeps_merge_its_arms_by_name(tmp_path, tiny_model_dir):
    import yaml

    from salsa.pipeline import plan_run

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "run": {"output_dir": str(tmp_path / "run")}, "sft": {"model": str(tiny_model_dir)},
        "eval": {"sweeps": {"salsa-liti": {"method": "liti", "models": ["soup_model", "salsa"], "values": [0.5]},
                            "rl-slerp": {"method": "slerp", "models": ["ppo", "salsa"], "values": [0.5]}}},
    }))  # fmt: skip
    plan = plan_run(path, ["run.seeds=2"])
    root = tmp_path / "run"
    liti, slerp = sorted(plan.eval.sweep_points(), key=lambda point: point.method)
    assert liti.models == tuple((str(root / "soup"), str(root / f"rl/salsa/seed-{s}/final")) for s in (0, 1))
    assert slerp.models == tuple((str(root / f"rl/ppo/seed-{s}/final"), str(root / f"rl/salsa/seed-{s}/final"))
                                 for s in (0, 1))  # fmt: skip
    with pytest.raises(SalsaError, match=r"eval.sweeps.rl-slerp.models: 'grpo' is not one of salsa, ppo, sft, "):
        plan_run(path, ["eval.sweeps={rl-slerp: {method: slerp, models: [grpo, salsa], values: [0.5]}}"])
