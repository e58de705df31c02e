"""`salsa run` on tiny models: the whole pipeline, its report, stage caching and resume after an interruption."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from salsa.errors import ConfigError
from salsa.io import read_jsonl
from salsa.pipeline import plan_run, run_pipeline


@pytest.fixture()
def run_yaml(tmp_path, tiny_model_dir):
    config = {
        "run": {"output_dir": str(tmp_path / "run")},
        "data": {"model": str(tiny_model_dir), "samples_per_prompt": 2, "max_new_tokens": 6},
        "reward": {"backbone": "causal", "model": str(tiny_model_dir), "num_epochs": 0.2, "max_length": 64},
        "sft": {"model": str(tiny_model_dir), "max_steps": 2, "batch_size": 4, "max_length": 64, "save_steps": 1},
        "rl": {
            "steps": 2,
            "prompts_per_step": 4,
            "max_new_tokens": 6,
            "save_steps": 1,
            "learning_rate": 1e-3,
            "snapshot_steps": 1,
        },
        "eval": {
            "max_new_tokens": 6,
            "landscape_alphas": [0.0, 0.5, 1.0],
            "bootstrap_samples": 200,
            "judge": str(tiny_model_dir),
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _forbid(monkeypatch, *targets):
    """Make these stage functions fail if the pipeline calls them (it should skip their stages)."""
    for target in targets:

        def boom(*args, _target=target, **kwargs):
            raise AssertionError(f"{_target} ran although its stage was finished")

        monkeypatch.setattr(target, boom)


def test_plan_wires_every_stage_into_the_run_directory(run_yaml, tmp_path):
    plan = plan_run(run_yaml, ["run.seeds=2"])
    root = tmp_path / "run"
    assert plan.soup.models == [str(root / "sft" / "sft-0"), str(root / "sft" / "sft-1")]
    assert sorted(plan.rl) == ["rl/ppo/seed-0", "rl/ppo/seed-1", "rl/salsa/seed-0", "rl/salsa/seed-1"]
    salsa, ppo = plan.rl["rl/salsa/seed-1"], plan.rl["rl/ppo/seed-1"]
    assert (salsa.init, salsa.reference) == (str(root / "soup"), "soup")
    assert (ppo.init, ppo.reference) == (str(root / "sft" / "sft-0"), "sft")
    # Equal budgets and seeds: the two methods differ only in start, anchor and directory.
    differing = {k for k in vars(salsa) if getattr(salsa, k) != getattr(ppo, k)}
    assert differing == {"init", "reference", "reference_model", "output_dir"}
    assert salsa.seed == plan.rl["rl/salsa/seed-0"].seed + 1
    assert plan.eval.policies["salsa"] == [str(root / "rl/salsa/seed-0/final"), str(root / "rl/salsa/seed-1/final")]
    assert plan.eval.comparisons[0] == "salsa:ppo"


def test_arms_as_data_give_the_two_by_two_with_its_own_seeds_and_a_kl_frontier(run_yaml, tmp_path):
    arms = (
        "{salsa: 'soup:soup', ppo: 'sft-0:sft-0', init-soup: 'soup:sft-0', ref-soup: 'sft-0:soup', anchor: 'sft-1:ema'}"
    )
    plan = plan_run(run_yaml, [f"run.arms={arms}", "run.seeds=2", "run.arm_seeds={init-soup: 1, ref-soup: 1}",
                               "run.kl_coefs=[0.02, 0.1]"])  # fmt: skip
    root, sft0 = tmp_path / "run", str(tmp_path / "run" / "sft" / "sft-0")
    soup = str(root / "soup")
    assert len(plan.rl) == 2 * (2 + 2 + 1 + 1 + 2)  # kl coefficients x seeds of each arm
    cases = {
        "rl/salsa/kl-0.02/seed-1": (soup, "soup", soup), "rl/ppo/kl-0.1/seed-0": (sft0, "sft", sft0),
        "rl/init-soup/kl-0.02/seed-0": (soup, "sft", sft0), "rl/ref-soup/kl-0.1/seed-0": (sft0, "soup", soup),
        "rl/anchor/kl-0.1/seed-1": (str(root / "sft" / "sft-1"), "ema", None),
    }  # fmt: skip
    for name, (init, reference, reference_model) in cases.items():
        config = plan.rl[name]
        assert (config.init, config.reference, config.reference_model) == (init, reference, reference_model), name
    assert plan.rl["rl/ppo/kl-0.02/seed-0"].kl_coef == 0.02 and plan.rl["rl/ppo/kl-0.1/seed-0"].kl_coef == 0.1
    assert "rl/init-soup/kl-0.1/seed-1" not in plan.rl  # its own number of seeds
    assert plan.eval.policies["salsa@kl0.1"] == [str(root / f"rl/salsa/kl-0.1/seed-{s}/final") for s in (0, 1)]
    # The headline pair (the first two arms) at each coefficient, then every policy against SFT.
    assert plan.eval.comparisons[:2] == ["salsa@kl0.02:ppo@kl0.02", "salsa@kl0.1:ppo@kl0.1"]
    assert "ref-soup@kl0.02:sft" in plan.eval.comparisons
    with pytest.raises(ConfigError, match="run.arms: sft-7 names SFT model 7, but sft trains 2 models"):
        plan_run(run_yaml, ["run.arms={x: 'sft-7:soup'}"])


def test_an_sft_arm_without_an_index_starts_seed_s_from_sft_model_s_mod_k(run_yaml, tmp_path):
    from salsa.config_loading import save_config
    from salsa.evaluation.summary import _arm_of
    from salsa.io import COMPLETE_MARKER, SOUP_RECORD

    arms = "{salsa: 'soup:soup', ppo: 'sft:sft', init-soup: 'soup:sft', ref-soup: 'sft:soup', pinned: 'sft-1:sft-1'}"
    plan = plan_run(run_yaml, [f"run.arms={arms}", "run.seeds=3"])
    root = tmp_path / "run"
    sft, soup = [str(root / "sft" / f"sft-{i}") for i in range(2)], str(root / "soup")
    for s in range(3):
        ingredient = sft[s % 2]  # K = 2: seeds 0 and 2 on sft-0, seed 1 on sft-1
        runs = {arm: plan.rl[f"rl/{arm}/seed-{s}"] for arm in ("salsa", "ppo", "init-soup", "ref-soup", "pinned")}
        starts = {arm: (c.init, c.reference, c.reference_model) for arm, c in runs.items()}
        assert starts == {
            "salsa": (soup, "soup", soup), "ppo": (ingredient, "sft", ingredient),
            "init-soup": (soup, "sft", ingredient), "ref-soup": (ingredient, "soup", soup),
            "pinned": (sft[1], "sft", sft[1]),  # sft-<i> keeps its meaning
        }, s  # fmt: skip
        assert all(c.sft_model == sft[0] for c in runs.values())  # KL to SFT: sft-0 for every run, one axis
    assert plan.eval.sft_model == sft[0]
    # The 2 x 2 still finds its four cells, whichever ingredient a seed started from.
    (root / "soup").mkdir(parents=True)
    (root / "soup" / SOUP_RECORD).write_text(json.dumps({"ingredients": sft}))
    for name, config in plan.rl.items():
        save_config(config, root / name / "config.yaml", section="rl")
        (root / name / COMPLETE_MARKER).write_text(json.dumps({"stage": "rl"}))  # a finished RL run's
    cells = {arm: _arm_of(plan.eval.policies[arm][1:]) for arm in ("salsa", "ppo", "init-soup", "ref-soup")}
    assert cells == {"salsa": ("soup", "soup", 0.05), "ppo": ("sft", "sft", 0.05),
                     "init-soup": ("soup", "sft", 0.05), "ref-soup": ("sft", "soup", 0.05)}  # fmt: skip
    with pytest.raises(ConfigError, match="run.arms.x: 'sft-:soup' must be INIT:REFERENCE, INIT sft-<i>, sft or soup"):
        plan_run(run_yaml, ["run.arms={x: 'sft-:soup'}"])


def _stub_base_stages(monkeypatch, tiny_model_dir):
    """data, reward, sft and soup as stubs that write what the stages after them read (training prompts, two SFT
    models: copies of the tiny model) and their completion markers, in a fraction of a second."""
    from salsa.io import COMPLETE_MARKER
    from salsa.tasks import reviews

    def done(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / COMPLETE_MARKER).write_text("{}")
        return folder

    def data(config, *args):
        rows = "".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in reviews.prompts("train")[:8])
        (done(Path(config.output_dir)) / "prompts_train.jsonl").write_text(rows)

    def sft(config, **kwargs):
        for i in range(2):
            shutil.copytree(tiny_model_dir, Path(config.output_dir) / f"sft-{i}")
        done(Path(config.output_dir))

    monkeypatch.setattr("salsa.task_data.make_task_data", data)
    monkeypatch.setattr("salsa.reward.train_reward", lambda config, *args: done(Path(config.output_dir)))
    monkeypatch.setattr("salsa.sft.train_sft", sft)
    monkeypatch.setattr("salsa.soup.build_soup_from_config", lambda config, *args: done(Path(config.output_dir)))


def test_a_shared_normalisation_is_measured_once_and_every_rl_job_reads_it_by_digest(
    run_yaml, tmp_path, tiny_model_dir, monkeypatch
):
    from salsa.grid import digest

    rule = f"{Path(__file__).parent / 'rewards.py'}:length"
    shared = ["run.reward_normalisation=shared", "rl.normalisation_samples=4", f"rl.reward_model={rule}",
              "run.arms={salsa: 'soup:soup', ppo: 'sft:sft'}", "run.seeds=2"]  # fmt: skip
    plan = plan_run(run_yaml, shared)
    root = tmp_path / "run"
    file = root / "normalisation" / "reward_normalisation.json"
    assert plan.normalisation.models == [str(root / "sft" / f"sft-{i}") for i in range(2)]
    assert plan.normalisation.samples == 4 and plan.normalisation.reward_model == rule
    assert {(c.reward_normalisation, c.normalisation_file) for c in plan.rl.values()} == {("fixed", str(file))}
    (tmp_path / "resolved.yaml").write_text(plan.to_yaml())
    again = plan_run(tmp_path / "resolved.yaml")  # the resolved config reads back to the same runs
    assert again.rl == plan.rl and again.normalisation == plan.normalisation
    assert plan_run(run_yaml).normalisation is None  # per_run, the default: each run measures its own
    with pytest.raises(ConfigError, match="run.reward_normalisation is shared, .* but rl.reward_normalisation is none"):
        plan_run(run_yaml, [*shared, "rl.reward_normalisation=none"])

    class NoJobs:  # the base stages and the jobs' specs only: no RL
        def run(self, root, todo, show_progress):
            return []

    monkeypatch.setattr("salsa.pipeline.make_executor", lambda *args: NoJobs())
    _stub_base_stages(monkeypatch, tiny_model_dir)
    assert run_pipeline(run_yaml, shared, show_progress=False) is None  # the jobs are not committed
    recorded = json.loads(file.read_text())
    assert recorded["samples"] == 4 and recorded["std"] > 0 and recorded["policy"] == plan.normalisation.models
    assert "normalisation" in json.loads((root / "pipeline.json").read_text())["stages"]
    for job in ("salsa/seed-0", "salsa/seed-1", "ppo/seed-0", "ppo/seed-1"):
        rl = yaml.safe_load((root / "jobs" / job / "rl.yaml").read_text())["rl"]
        assert (rl["reward_normalisation"], rl["normalisation_file"]) == ("fixed", str(file.resolve())), job
        spec = json.loads((root / "jobs" / job / "job.json").read_text())
        assert spec["inputs"]["{RUN}/normalisation/reward_normalisation.json"] == digest(file), job
    # A rerun measures nothing again.
    _forbid(monkeypatch, "salsa.rl.normalisation.shared_normalisation")
    assert run_pipeline(run_yaml, shared, show_progress=False) is None


def test_a_jobs_paths_are_absolute_before_the_base_stages_ran_as_after(run_yaml, tmp_path, monkeypatch):
    from salsa.pipeline import plan_grid

    monkeypatch.chdir(tmp_path)  # a relative run directory, as in the examples
    overrides = ["run.output_dir=runs/study", "run.reward_normalisation=shared", "run.arms={ppo: 'sft:soup'}"]
    before = plan_grid(plan_run(run_yaml, overrides))
    for job in before[1:]:
        paths = (job.rl.init, job.rl.reference_model, job.rl.sft_model, job.rl.normalisation_file, job.rl.prompts)
        assert all(Path(p).is_absolute() for p in paths), paths
    (tmp_path / "runs/study/sft/sft-0").mkdir(parents=True)  # once a stage wrote it, the job is the same job
    assert plan_grid(plan_run(run_yaml, overrides)) == before


def test_adding_seeds_keeps_the_jobs_that_ran_and_a_changed_setting_redoes_them(tmp_path, tiny_model_dir):
    from salsa.config import EvalConfig, RLConfig
    from salsa.config_loading import fingerprint, save_config
    from salsa.grid import Job, committed, job_dir, write_spec

    root = tmp_path / "run"

    def plan(seeds: int, **settings) -> tuple[EvalConfig, list[Job]]:
        """A grid of `seeds` RL seeds of one arm beside a base policy, as `salsa run --seeds` plans it."""
        runs = [root / "rl" / "salsa" / f"seed-{s}" for s in range(seeds)]
        evaluation = EvalConfig(policies={"sft": [str(tiny_model_dir)], "salsa": [str(r / "final") for r in runs]},
                                task="reviews", **settings)  # fmt: skip
        rl = [Job(f"salsa/seed-{s}", RLConfig(output_dir=str(r), seed=s), "salsa", s) for s, r in enumerate(runs)]
        return evaluation, [Job("base"), *rl]

    def write(evaluation: EvalConfig, jobs: list[Job]) -> dict[str, bool]:
        return {job.id: write_spec(root, job, evaluation, [str(tiny_model_dir)]) for job in jobs}

    def commit(job_id: str) -> None:  # what a finished job leaves: its commit and its RL run
        (job_dir(root, job_id) / "committed.json").write_text("{}")
        if job_id != "base":
            (root / "rl" / job_id).mkdir(parents=True)
            (root / "rl" / job_id / "salsa_complete.json").write_text(json.dumps({"stage": "rl"}))

    two = plan(2)
    assert write(*two) == dict.fromkeys(["base", "salsa/seed-0", "salsa/seed-1"], False)
    for job_id in ("base", "salsa/seed-0", "salsa/seed-1"):
        commit(job_id)
    # A third seed: the jobs that ran keep their commits and RL runs; their eval.yaml is the grown grid's.
    three = plan(3)
    assert write(*three) == dict.fromkeys(["base", "salsa/seed-0", "salsa/seed-1", "salsa/seed-2"], False)
    assert all(committed(root, job_id) is not None for job_id in ("base", "salsa/seed-0", "salsa/seed-1"))
    assert (root / "rl/salsa/seed-1/salsa_complete.json").is_file()
    grid = yaml.safe_load((job_dir(root, "salsa/seed-0") / "eval.yaml").read_text())["eval"]["policies"]["salsa"]
    assert grid == three[0].policies["salsa"]
    spec = json.loads((job_dir(root, "salsa/seed-1") / "job.json").read_text())
    assert spec["policies"] == {"sft": [str(tiny_model_dir)], "salsa": ["{RUN}/rl/salsa/seed-1/final"]}
    # Comparisons (another arm's, say) are the eval stage's alone: no job is redone for them.
    assert set(write(*plan(3, comparisons=["salsa:sft"])).values()) == {False}
    # A spec of the first form (the whole 2-seed evaluation fingerprinted, as salsa wrote it then beside that
    # evaluation's eval.yaml), planned now with 3 seeds: the same job, its spec upgraded, not redone.
    first = {key: spec[key] for key in ("id", "policy", "seed_index", "inputs", "rl")}
    first["eval"] = fingerprint(two[0])
    first["spec"] = hashlib.sha256(json.dumps(first, sort_keys=True).encode()).hexdigest()[:16]
    (job_dir(root, "salsa/seed-1") / "job.json").write_text(json.dumps(first))
    save_config(two[0], job_dir(root, "salsa/seed-1") / "eval.yaml", section="eval")
    assert write(*three)["salsa/seed-1"] is False and committed(root, "salsa/seed-1") is not None
    assert json.loads((job_dir(root, "salsa/seed-1") / "job.json").read_text()) == spec
    # One whose recorded evaluation had other settings is another job.
    (job_dir(root, "salsa/seed-1") / "job.json").write_text(json.dumps(first))
    save_config(plan(2, max_new_tokens=7)[0], job_dir(root, "salsa/seed-1") / "eval.yaml", section="eval")
    assert write(*three)["salsa/seed-1"] is True and committed(root, "salsa/seed-1") is None
    # A setting every job's samples depend on: each job that ran is redone, its RL run removed.
    assert set(write(*plan(3, max_new_tokens=7)).values()) == {True}
    assert committed(root, "salsa/seed-0") is None and not (root / "rl/salsa/seed-0").exists()


def test_plan_rejects_unsectioned_overrides_and_single_sft(run_yaml):
    with pytest.raises(ConfigError, match="needs its section"):
        plan_run(run_yaml, ["steps=3"])
    with pytest.raises(ConfigError, match="K >= 2"):
        plan_run(run_yaml, ["sft.num_models=1"])


def _copy_data_stage(finished: Path, run: Path) -> None:
    """The data stage of a finished run into a new run directory, as a run stopped after it leaves it: its folder,
    the run directory's own record and its fingerprint in pipeline.json. It reads no path of the run, so a run with
    the same data: section finds it finished."""
    run.mkdir()
    shutil.copytree(finished / "data", run / "data")
    shutil.copy2(finished / "salsa_stage.json", run / "salsa_stage.json")
    data = json.loads((finished / "pipeline.json").read_text())["stages"]["data"]
    (run / "pipeline.json").write_text(json.dumps({"stages": {"data": data}}))


def test_run_resumes_after_interruption_then_skips_finished_stages(run_yaml, tmp_path, monkeypatch, tiny_study):
    import salsa.rl.ppo as ppo
    from salsa.grid import attempts

    root = tmp_path / "run"
    # The tiny study's data (the same data: section) instead of sampling it again: the first run starts after it.
    _copy_data_stage(tiny_study / "run", root)
    _forbid(monkeypatch, "salsa.task_data.make_task_data")
    real_update, calls = ppo.rl_update, []

    def interrupted_update(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # step 2 of the first RL run (rl/salsa/seed-0), after its step-1 checkpoint
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(ppo, "rl_update", interrupted_update)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(run_yaml, show_progress=False)
    assert (root / "rl/salsa/seed-0/checkpoints/step-0000001/weights.safetensors").is_file()
    assert not (root / "eval").exists()
    monkeypatch.setattr(ppo, "rl_update", real_update)

    # Rerun: finished stages are skipped; the interrupted RL run continues from its step-1 checkpoint.
    _forbid(monkeypatch, "salsa.reward.train_reward", "salsa.sft.train_sft", "salsa.soup.build_soup_from_config")
    report = run_pipeline(run_yaml, show_progress=False)
    assert [r["step"] for r in read_jsonl(root / "rl/salsa/seed-0/metrics.jsonl")] == [1, 2]
    state = json.loads((root / "pipeline.json").read_text())
    assert set(state["stages"]) == {"data", "reward", "sft", "soup", "eval"}
    # Each RL run is a job of the grid, committed once; the interrupted one by its second attempt, from step 1.
    committed = sorted(p.parent.relative_to(root / "jobs").as_posix() for p in root.glob("jobs/**/committed.json"))
    assert committed == ["base", "ppo/seed-0", "salsa/seed-0"]
    assert [a["start_step"] for a in attempts(root, "salsa/seed-0")] == [0, 1]
    assert json.loads((root / "jobs/salsa/seed-0/committed.json").read_text())["attempt"] == 2

    # The report: Markdown, HTML, every plot, a computed verdict and machine-readable numbers.
    for name in ("report.md", "report.html", "summary.json", "win_rates.png", "landscape.png", "frontier.png"):
        assert (report / name).is_file(), name
    summary = json.loads((report / "summary.json").read_text())
    # One RL seed: the rule's verdict is unresolved, and says why (the design pre-registers 5 seeds).
    assert summary["verdict"] == "unresolved" == summary["headline"]["claim"]
    assert summary["verdict_reason"].startswith("1 seed, fewer than the 5 the design pre-registers")
    assert summary["verdict_text"].startswith("salsa beats ppo (in-distribution prompts, gold judge): **unresolved**")
    assert summary["headline"]["a"] == "salsa" and summary["headline"]["b"] == "ppo"
    assert set(summary["policies"]) == {"salsa", "ppo", "sft"}
    assert summary["policies"]["sft"]["kl_sft"]["mean"] == 0.0  # the SFT policy is the KL reference itself
    markdown = (report / "report.md").read_text()
    assert summary["verdict_text"] in markdown and "![Reward landscape" in markdown
    # A results page: the results table first (the headline pair on every split and judge, the pre-specified one
    # first, then each policy against SFT), the verdict right under it; soup health and paired examples as tables.
    page = (report / "report.html").read_text()
    assert page.index("<h2>Results</h2>") < page.index("<table>") < page.index("<strong>Verdict</strong>")
    table = summary["results_table"]
    assert table[1][:3] == ["salsa vs ppo", "in-distribution", "gold judge"] and table[1][5] == "unresolved¹"
    assert [row[0] for row in table[1:]] == sorted([row[0] for row in table[1:]], key=["salsa vs ppo", "salsa vs sft",
            "ppo vs sft"].index)  # fmt: skip
    assert "| KL(row \\|\\| column) | ingredient-0 | ingredient-1 | soup |" in markdown  # a | in a cell escaped
    assert page.count('<div class="example">') == 3
    # Clip fraction and approx. KL are 0 by construction (one gradient step per rollout): one line, not a flat plot.
    assert "Training curves not drawn: clip fraction and approx. KL(old || new) per update were 0" in markdown
    results = json.loads((root / "eval/results.json").read_text())
    assert [p["alpha"] for p in results["landscape"]] == [0.0, 0.5, 1.0]
    # The built-in prompts come in subjects of near-paraphrases: the bootstrap draws subjects, and says so.
    settings = results["settings"]
    assert settings["bootstrap_unit"] == "subject" and "percentile bootstrap over subjects" in markdown
    assert settings["bootstrap_clusters"]["in_distribution"] * 6 == settings["prompts"]["in_distribution"]
    assert set(results["frontier"]) == {"salsa", "ppo"}
    assert set(results["over_optimisation"]) == {"salsa", "ppo"} and "**Over-optimisation**" in markdown
    # The landscape's alpha = 0 endpoint is the SFT policy: its samples are reused, not drawn again.
    samples = read_jsonl(root / "eval/samples.jsonl")
    sft_responses = [r["response"] for r in samples if r.get("policy") == "sft" and r["split"] == "in_distribution"]
    assert [r["response"] for r in samples if r.get("alpha") == 0.0] == sft_responses
    # The LLM judge compared every pair on both splits, and the report says how it judged.
    judged = {(c["a"], c["b"], c["split"]) for c in results["comparisons"] if c["judge"] == "llm"}
    assert len(judged) == 2 * len(plan_run(run_yaml).eval.comparisons)
    judgments = read_jsonl(root / "eval/judgments.jsonl")
    assert {j["verdict"] for j in judgments} <= {-1, 0, 1} and len(judgments) == sum(c["n"] for c in (
        c for c in results["comparisons"] if c["judge"] == "llm"))  # fmt: skip
    assert results["llm_judge"]["pairs"] == len(judgments) and "gold" in results["llm_judge"]
    assert "**LLM judge.**" in markdown

    # SALSA against PPO at matched KL: here the saved policies' KL ranges do not overlap (SALSA starts at the soup,
    # already away from SFT-0), so the report says so instead of comparing policies at different KLs.
    assert results["matched_kl_comparisons"] == []
    (note,) = results["matched_kl_notes"]
    assert note.startswith("salsa vs ppo: no saved policies at matched KL") and "do not overlap" in note
    assert "Saved policies at matched KL" in markdown and "(matched KL)" not in markdown
    # The saved policies answer with their KL to the SFT model, the axis they are matched on, and to nothing else.
    saved = [r for r in samples if "snapshot" in r]
    assert saved and all("kl_sft" in r and "kl_soup" not in r for r in saved)

    # A changed RL budget redoes RL and eval only. A smaller one: the runs are redone (step 1 only, not the 2 steps
    # they had), and leave no snapshot to draw and evaluate.
    run_pipeline(run_yaml, ["rl.steps=1"], show_progress=False)
    assert [r["step"] for r in read_jsonl(root / "rl/ppo/seed-0/metrics.jsonl")] == [1]

    # Everything finished with this config: nothing runs but the report.
    _forbid(monkeypatch, "salsa.rl.ppo.train_rl", "salsa.evaluate.evaluate")
    run_pipeline(run_yaml, ["rl.steps=1"], show_progress=False)


def test_the_resolved_config_holds_what_the_runs_use_and_reads_back_to_the_same_plan(run_yaml, tmp_path):
    plan = plan_run(run_yaml, ["run.seeds=2", "rl.seed=5"])
    text = plan.to_yaml()
    shared = yaml.safe_load(text)["rl"]
    assert "init" not in shared and "output_dir" not in shared  # set per run, listed below the section
    assert shared["reward_model"] == plan.rl["rl/ppo/seed-0"].reward_model and shared["seed"] == 5
    assert f"# rl/salsa/seed-1: init {tmp_path / 'run' / 'soup'}, reference soup" in text
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(text)
    assert plan_run(resolved).rl == plan.rl


def test_own_data_without_a_task_skips_the_data_stage_and_names_what_is_missing(run_yaml, tmp_path):
    with pytest.raises(ConfigError, match="run.task is null .* set sft.data, reward.data, rl.prompts, eval.prompts"):
        plan_run(run_yaml, ["run.task=null"])
    own = ["run.task=null", "sft.data=hub:HuggingFaceH4/ultrachat_200k:train_sft",
           "reward.data=hub:HuggingFaceH4/ultrafeedback_binarized:train_prefs",
           "rl.prompts=hub:HuggingFaceH4/ultrafeedback_binarized:train_prefs",
           "eval.prompts=hub:HuggingFaceH4/ultrafeedback_binarized:test_prefs"]  # fmt: skip
    plan = plan_run(run_yaml, own)
    assert plan.data is None and plan.reward.eval_data is None and plan.eval.ood_prompts is None
    assert all(c.task is None for c in plan.rl.values()) and plan.eval.task is None
    assert plan.rl["rl/ppo/seed-0"].prompts == "hub:HuggingFaceH4/ultrafeedback_binarized:train_prefs"


EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    "example", sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*") if p.is_file())
)
def test_the_shipped_examples_are_valid_offline(example, monkeypatch, tmp_path):
    from salsa.pipeline import dry_run

    path = EXAMPLES / example
    if "compute_environment" in yaml.safe_load(path.read_text()):  # an Accelerate launch config
        from accelerate.commands.config.config_args import load_config_from_file

        config = load_config_from_file(str(path))  # refuses keys this Accelerate does not know
        assert config.distributed_type == "MULTI_GPU" and config.num_processes % config.num_machines == 0
        return
    monkeypatch.chdir(tmp_path)  # the examples' relative run directories land here
    plan = plan_run(path)
    lines = dry_run(plan)  # hub models and datasets checked by name only: nothing is fetched
    assert lines[-1].startswith("eval: ") and any(line.startswith("rl/salsa/") for line in lines)
    if example.startswith("gpu"):
        assert plan.data is None and plan.sft.sharding == "fsdp2" and plan.rl["rl/ppo/seed-0"].mixed_precision == "bf16"
