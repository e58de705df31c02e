"""A catalogue of user mistakes, every stage: each is one line on stderr naming what is wrong, exit code 2, no
traceback, and no file created or removed. docs/errors.md lists the same mistakes with their fixes.

The command line runs in this process (the parsing and checks are what is tested; no model loads), in a
directory of prepared files.
"""

import json
import re
from types import SimpleNamespace

import pytest

from salsa.config import DataConfig
from salsa.config_loading import fingerprint, result_values

GOOD_PREFS = [{"prompt": "Review a cafe.", "chosen": "Lovely cafe.", "rejected": "Bad cafe."}] * 3


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def w(tmp_path, tiny_model_dir, monkeypatch):
    """A directory of good and bad inputs; the command runs inside it, so default paths (runs/...) land there."""
    monkeypatch.chdir(tmp_path)
    t = tmp_path
    world = SimpleNamespace(root=t, model=str(tiny_model_dir))
    world.prompts = _jsonl(t / "prompts.jsonl", [{"prompt": "Review a cafe."}, {"prompt": "Review a shop."}])
    world.prefs = _jsonl(t / "prefs.jsonl", GOOD_PREFS)
    world.sft = _jsonl(t / "sft.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    (t / "bad.jsonl").write_text('{"prompt": "ok", "completion": "fine"}\n{"prompt": oops}\n')
    (t / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "completion": "x"}\n')
    _jsonl(t / "no_completion.jsonl", [{"prompt": "Hi"}])
    _jsonl(t / "no_rejected.jsonl", [{"prompt": "p", "chosen": "a"}])
    _jsonl(t / "same_reply.jsonl", [*GOOD_PREFS, {"prompt": "p", "chosen": "Fine.", "rejected": "Fine."}])
    _jsonl(t / "gold_text.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": "high"}])
    _jsonl(t / "empty_prompt.jsonl", [{"prompt": "  "}])
    (t / "not_a_dataset").mkdir()
    (t / "not_a_dataset" / "rows.txt").write_text("x")
    (t / "mine").mkdir()
    (t / "mine" / "notes.txt").write_text("my notes")
    (t / "a_file.txt").write_text("not a directory")
    (t / "reward_no_meta").mkdir()
    (t / "reward_ok").mkdir()
    (t / "reward_ok" / "salsa_reward.json").write_text('{"backbone": "causal", "max_length": 64, "mean": 0, "std": 1}')
    (t / "reward_bad_meta").mkdir()
    (t / "reward_bad_meta" / "salsa_reward.json").write_text("{backbone: encoder")
    (t / "norm_bad.json").write_text('{"mean": 0.1}')
    (t / "eval_bad").mkdir()
    (t / "eval_bad" / "results.json").write_text('{"settings": ')
    (t / "eval_good").mkdir()
    (t / "eval_good" / "results.json").write_text(
        json.dumps({"settings": {"verdict_min_seeds": 5}, "policies": {}, "comparisons": [], "judges": []})
    )
    (t / "eval_old").mkdir()
    (t / "eval_old" / "results.json").write_text(
        json.dumps({"settings": {}, "policies": {}, "comparisons": [], "judges": []})
    )
    (t / "template.txt").write_text("Request: {prompt}\nA: {response_a}\nWhich is better?")
    (t / "broken.yaml").write_text("sft: [unclosed\n")
    (t / "misspelled.yaml").write_text("sfft:\n  learning_rate: 1.0e-5\n")
    (t / "run_misspelled.yaml").write_text("run:\n  seeds: 1\nrll:\n  steps: 3\n")
    # A finished `salsa data make` directory made with seed 0 (markers as the engine writes them).
    made = DataConfig(output_dir=str(t / "data0"), seed=0)
    record = {"stage": "data", "fingerprint": fingerprint(made), "config": result_values(made)}
    (t / "data0").mkdir()
    for marker in ("salsa_stage.json", "salsa_complete.json"):
        (t / "data0" / marker).write_text(json.dumps(record))
    return world


def _tree(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


RL = ["rl", "--init", "{model}", "--reward-model", "reward_ok"]
EVAL = ["eval", "-p", "a={model}", "--set", "prompts={prompts}", "--set", "ood_prompts=null",
        "--set", "reward_model=null", "--set", "sft_model=null", "--set", "soup_model=null"]  # fmt: skip

# (id, command line with {placeholders} from the fixture, a regex the one line must match)
CASES = [
    # --- salsa sft
    (
        "sft-unknown-key",
        ["sft", "--set", "learning_rte=1e-4"],
        r"unknown key 'learning_rte'; did you mean 'learning_rate'",
    ),
    (
        "sft-bad-int-hidden-by-option",
        ["sft", "--set", "max_steps=abc", "--max-steps", "2"],
        r"--set 'max_steps=abc': expected an integer, got 'abc'",
    ),
    ("sft-missing-data", ["sft", "--data", "nope.jsonl"], r"data file nope.jsonl does not exist"),
    ("sft-invalid-json-row", ["sft", "--data", "bad.jsonl"], r"bad.jsonl row 2: not valid JSON"),
    ("sft-not-utf8", ["sft", "--data", "latin1.jsonl"], r"latin1.jsonl row 1: not UTF-8 text"),
    (
        "sft-missing-field",
        ["sft", "--data", "no_completion.jsonl"],
        r"no_completion.jsonl row 1: missing field 'completion'",
    ),
    (
        "sft-data-dir-not-dataset",
        ["sft", "--data", "not_a_dataset"],
        r"not_a_dataset is a directory but not a saved `datasets` dataset",
    ),
    (
        "sft-model-path-missing",
        ["sft", "--model", "runs/base/model", "--data", "{sft}"],
        r"sft.model: model directory runs/base/model does not exist",
    ),
    (
        "sft-model-hub-offline",
        ["sft", "--model", "someone/no-such-model", "--data", "{sft}"],
        r"sft.model: 'someone/no-such-model' is not a local directory and not in the Hugging Face cache",
    ),
    (
        "sft-model-is-a-file",
        ["sft", "--model", "a_file.txt", "--data", "{sft}"],
        r"sft.model: a_file.txt is a file, not a model directory",
    ),
    (
        "sft-model-not-a-model-dir",
        ["sft", "--model", "mine", "--data", "{sft}"],
        r"sft.model: mine is not a model directory \(no config.json\)",
    ),
    ("sft-lr-zero", ["sft", "--set", "learning_rate=0"], r"sft.learning_rate must be > 0, got 0.0"),
    ("sft-lr-nan", ["sft", "--set", "learning_rate=nan"], r"learning_rate=nan': expected a finite number"),
    ("sft-batch-zero", ["sft", "--set", "batch_size=0"], r"sft.batch_size must be >= 1, got 0"),
    (
        "sft-scheduler",
        ["sft", "--set", "lr_scheduler=step"],
        r"sft.lr_scheduler must be one of cosine, linear, constant",
    ),
    ("sft-warmup", ["sft", "--set", "warmup_ratio=1.5"], r"sft.warmup_ratio must lie in \[0, 1\), got 1.5"),
    ("sft-seeds-repeat", ["sft", "--set", "seeds=[1, 1]"], r"sft.seeds must be distinct"),
    ("sft-precision", ["sft", "--set", "mixed_precision=fp8"], r"sft.mixed_precision must be one of auto, no, bf16"),
    ("sft-nonfinite-policy", ["sft", "--set", "on_nonfinite=ignore"], r"sft.on_nonfinite must be one of stop, skip"),
    (
        "sft-output-is-file",
        ["sft", "--model", "{model}", "--data", "{sft}", "--output-dir", "a_file.txt"],
        r"a_file.txt is a file, not a directory",
    ),
    (
        "sft-output-foreign",
        ["sft", "--model", "{model}", "--data", "{sft}", "--output-dir", "mine"],
        r"mine holds files salsa did not write \(e.g. notes.txt\)",
    ),
    ("sft-config-missing", ["sft", "-c", "nope.yaml"], r"config file nope.yaml does not exist"),
    ("sft-config-broken", ["sft", "-c", "broken.yaml"], r"broken.yaml: not valid YAML"),
    (
        "sft-config-misspelled-section",
        ["sft", "-c", "misspelled.yaml"],
        r"misspelled.yaml: unknown section 'sfft'; did you mean 'sft'",
    ),
    ("sft-set-without-equals", ["sft", "--set", "learning_rate"], r"--set 'learning_rate': expected KEY=VALUE"),
    ("sft-set-unknown-section", ["sft", "--set", "sfft.seed=1"], r"unknown section 'sfft'; did you mean 'sft'"),
    ("sft-unknown-option", ["sft", "--learning-rate", "1"], r"No such option: --learning-rate"),
    ("sft-option-wrong-type", ["sft", "--num-models", "two"], r"Invalid value for '--num-models'"),
    # --- salsa soup
    ("soup-one-model", ["soup", "{model}", "--out", "s"], r"a soup needs at least two models, got 1"),
    ("soup-weight-count", ["soup", "{model}", "{model}", "-w", "1.0", "--out", "s"], r"got 1 weights for 2 models"),
    (
        "soup-weight-nan",
        ["soup", "{model}", "{model}", "-w", "nan", "-w", "0.5", "--out", "s"],
        r"'weights=nan,0.5': expected a finite number, got 'nan'",
    ),
    (
        "soup-negative-weight",
        ["soup", "{model}", "{model}", "-w", "1.5", "-w", "-0.5", "--out", "s"],
        r"weights must be >= 0, got \[1.5, -0.5\]; pass --allow-extrapolation",
    ),
    (
        "soup-weights-sum",
        ["soup", "{model}", "{model}", "-w", "0.5", "-w", "0.6", "--out", "s"],
        r"weights must sum to 1",
    ),
    (
        "soup-alpha-range",
        ["soup", "{model}", "{model}", "--alpha", "1.5", "--out", "s"],
        r"alpha=1.5 lies outside \[0, 1\]; pass --allow-extrapolation",
    ),
    (
        "soup-missing-ingredient",
        ["soup", "{model}", "nope", "--out", "s"],
        r"soup.models: nope is not a model directory",
    ),
    (
        "soup-output-is-ingredient",
        ["soup", "{model}", "{model}", "--out", "{model}"],
        r"the output directory .* is the input soup.models",
    ),
    (
        "soup-output-foreign",
        ["soup", "{model}", "{model}", "--out", "mine"],
        r"mine holds files salsa did not write \(e.g. notes.txt\)",
    ),
    (
        "soup-output-is-file",
        ["soup", "{model}", "{model}", "--out", "a_file.txt"],
        r"a_file.txt is a file, not a directory",
    ),
    (
        "soup-shard-size",
        ["soup", "{model}", "{model}", "--out", "s", "--max-shard-size", "big"],
        r"max_shard_size 'big' is not a size",
    ),
    (
        "soup-dtype",
        ["soup", "{model}", "{model}", "--out", "s", "--dtype", "float8"],
        r"soup.dtype must be one of float32, bfloat16, float16",
    ),
    (
        "soup-reads-an-sft-root",
        ["soup", "{model}", "{model}", "--out", "data0"],
        r"data0 holds the output of `salsa data`",
    ),
    (
        "soup-slerp-three-models",
        ["soup", "{model}", "{model}", "{model}", "--method", "slerp", "--t", "0.5", "--out", "s"],
        r"soup.method slerp merges exactly two models \(the start, then the RL policy\), got 3",
    ),
    (
        "soup-method-without-parameter",
        ["soup", "{model}", "{model}", "--method", "liti", "--out", "s"],
        r"soup.method liti needs soup.eta \(--eta on the command line\)",
    ),
    (
        "soup-parameter-of-another-method",
        ["soup", "{model}", "{model}", "--t", "0.5", "--out", "s"],
        r"soup.t is a setting of method slerp, but soup.method is linear; drop it",
    ),
    (
        "soup-slerp-t-range",
        ["soup", "{model}", "{model}", "--method", "slerp", "--t", "1.5", "--out", "s"],
        r"soup.t=1.5 lies outside \[0, 1\]",
    ),
    (
        "soup-expo-alpha",
        ["soup", "{model}", "{model}", "--method", "expo", "--expo-alpha", "0", "--out", "s"],
        r"soup.expo_alpha must be > 0, got 0.0",
    ),
    (
        "soup-method",
        ["soup", "{model}", "{model}", "--method", "ties", "--out", "s"],
        r"soup.method must be one of linear, slerp, expo, liti, got 'ties'",
    ),
    # --- salsa data make
    (
        "data-unknown-task",
        ["data", "make", "--task", "movies"],
        r"data.task must be a built-in task \(reviews\), got 'movies'",
    ),
    ("data-temperature-zero", ["data", "make", "--set", "temperature=0"], r"data.temperature must be > 0, got 0.0"),
    (
        "data-temperature-negative",
        ["data", "make", "--set", "temperature=-1"],
        r"data.temperature must be > 0, got -1.0",
    ),
    ("data-one-sample", ["data", "make", "--set", "samples_per_prompt=1"], r"data.samples_per_prompt must be >= 2"),
    ("data-top-p", ["data", "make", "--set", "top_p=0"], r"data.top_p must lie in \(0, 1\]"),
    (
        "data-reuse-other-seed",
        ["data", "make", "--output-dir", "data0", "--seed", "1"],
        r"data0 was made with another config \(seed: 0 -> 1\)",
    ),
    ("data-output-foreign", ["data", "make", "--output-dir", "mine"], r"mine holds files salsa did not write"),
    (
        "data-model-missing",
        ["data", "make", "--model", "./models/x"],
        r"data.model: model directory ./models/x does not exist",
    ),
    # --- salsa reward
    ("reward-missing-data", ["reward", "--data", "nope.jsonl"], r"data file nope.jsonl does not exist"),
    (
        "reward-missing-rejected",
        ["reward", "--data", "no_rejected.jsonl"],
        r"no_rejected.jsonl row 1: missing field 'rejected'",
    ),
    (
        "reward-gold-not-number",
        ["reward", "--data", "gold_text.jsonl"],
        r"gold_text.jsonl row 1: field 'gold_chosen' must be a finite number",
    ),
    (
        "reward-eval-invalid",
        ["reward", "--data", "{prefs}", "--eval-data", "bad.jsonl"],
        r"bad.jsonl row 2: not valid JSON",
    ),
    (
        "reward-same-response",
        ["reward", "--data", "same_reply.jsonl"],
        r"same_reply.jsonl row 4: 'chosen' and 'rejected' are the same response; fix or drop the row",
    ),
    ("reward-backbone", ["reward", "--backbone", "transformer"], r"reward.backbone must be one of encoder, causal"),
    (
        "reward-lr-negative",
        ["reward", "--set", "learning_rate=-1e-4"],
        r"reward.learning_rate must be > 0, got -0.0001",
    ),
    ("reward-restarts", ["reward", "--set", "restarts=-1"], r"reward.restarts must be >= 0, got -1"),
    ("reward-epochs", ["reward", "--set", "num_epochs=0"], r"reward.num_epochs must be > 0"),
    ("reward-num-models", ["reward", "--num-models", "0"], r"reward.num_models must be >= 1, got 0"),
    # --- salsa rl
    (
        "rl-soup-init-not-soup",
        ["rl", "--init", "{model}", "--reference", "soup"],
        r"rl.reference is soup but rl.init \(.+\) is not a soup directory \(no soup.json from `salsa soup`\); pass",
    ),
    ("rl-negative-kl", ["rl", "--set", "kl_coef=-0.1"], r"rl.kl_coef must be >= 0, got -0.1"),
    ("rl-lr-zero", ["rl", "--set", "learning_rate=0"], r"rl.learning_rate must be > 0, got 0.0"),
    ("rl-lr-negative", ["rl", "--set", "learning_rate=-1e-5"], r"rl.learning_rate must be > 0, got -1e-05"),
    (
        "rl-rloo-one-sample",
        ["rl", "--algorithm", "rloo", "--set", "samples_per_prompt=1"],
        r"rl.samples_per_prompt must be >= 2 for rloo, got 1",
    ),
    ("rl-algorithm", ["rl", "--algorithm", "a2c"], r"rl.algorithm must be one of ppo, rloo, grpo, got 'a2c'"),
    (
        "rl-dpo",
        ["rl", "--set", "algorithm=dpo"],
        r"rl.algorithm must be one of ppo, rloo, grpo \(DPO is its own command now: `salsa dpo`",
    ),
    (
        "rl-dpo-key",
        ["rl", "--set", "dpo_beta=0.2"],
        r"unknown key 'dpo_beta'; it is dpo.beta now, in the config of `salsa dpo`",
    ),
    ("rl-temperature", ["rl", "--set", "temperature=0"], r"rl.temperature must be > 0"),
    ("rl-value-head", ["rl", "--set", "value_head=tied"], r"rl.value_head must be one of shared, separate"),
    ("rl-unknown-task", ["rl", "--set", "task=movies"], r"rl.task must be a built-in task"),
    (
        "rl-reference-model-unused",
        ["rl", "--reference", "none", "--reference-model", "{model}"],
        r"rl.reference_model is set but rl.reference is 'none'",
    ),
    (
        "rl-schedule-steps",
        ["rl", "--set", "reference_schedule=hard", "--set", "reference_update_steps=0"],
        r"rl.reference_update_steps must be >= 1, got 0",
    ),
    (
        "rl-schedule-weight",
        ["rl", "--set", "reference_schedule=soft", "--set", "reference_update_weight=0"],
        r"rl.reference_update_weight must lie in \(0, 1\], got 0.0",
    ),
    (
        "rl-schedule-unknown",
        ["rl", "--set", "reference_schedule=cosine"],
        r"rl.reference_schedule must be one of fixed, ema, soft, hard, got 'cosine'",
    ),
    (
        "rl-schedule-without-reference",
        ["rl", "--reference", "none", "--set", "reference_schedule=soft"],
        r"rl.reference_schedule is soft but rl.reference is none: there is no reference to move",
    ),
    (
        "rl-ema-reference-with-schedule",
        ["rl", "--reference", "ema", "--set", "reference_schedule=hard"],
        r"rl.reference ema is the ema schedule from the init, but rl.reference_schedule is hard",
    ),
    ("rl-init-missing", ["rl", "--init", "runs/sft/sft-9"], r"rl.init: model directory runs/sft/sft-9 does not exist"),
    (
        "rl-reward-missing",
        ["rl", "--init", "{model}", "--reward-model", "./nope"],
        r"rl.reward_model: reward model directory ./nope does not exist",
    ),
    (
        "rl-reward-hub-offline",
        ["rl", "--init", "{model}", "--reward-model", "nope"],
        r"rl.reward_model: 'nope' is not a local directory and not in the Hugging Face cache, and the hub is offline",
    ),
    (
        "rl-reward-no-meta",
        ["rl", "--init", "{model}", "--reward-model", "reward_no_meta"],
        r"reward_no_meta is not a reward model \(no config.json\)",
    ),
    (
        "rl-reward-corrupt",
        ["rl", "--init", "{model}", "--reward-model", "reward_bad_meta"],
        r"reward_bad_meta/salsa_reward.json: corrupt",
    ),
    (
        "rl-normalisation-without-file",
        [*RL, "--set", "reward_normalisation=fixed"],
        r"rl.normalisation_file is the mean and std of rl.reward_normalisation fixed: set both or neither",
    ),
    (
        "rl-normalisation-missing",
        [*RL, "--set", "reward_normalisation=fixed", "--set", "normalisation_file=nope.json"],
        r"rl.normalisation_file: nope.json does not exist",
    ),
    (
        "rl-normalisation-corrupt",
        [*RL, "--set", "reward_normalisation=fixed", "--set", "normalisation_file=norm_bad.json"],
        r"rl.normalisation_file: norm_bad.json is corrupt \(expects a finite mean and std > 0\)",
    ),
    ("rl-prompts-missing", [*RL, "--set", "prompts=nope.jsonl"], r"data file nope.jsonl does not exist"),
    (
        "rl-prompt-empty",
        [*RL, "--set", "prompts=empty_prompt.jsonl"],
        r"empty_prompt.jsonl row 1: field 'prompt' is empty",
    ),
    (
        "rl-prompts-brackets",
        [*RL, "--set", "prompts=reviews[train].jsonl"],
        r"data file reviews\[train\].jsonl does not exist",
    ),
    (
        "rl-weights-without-models",
        ["rl", "--set", "reference_weights=[0.5, 0.5]"],
        r"rl.reference_weights needs rl.reference_models",
    ),
    # --- salsa dpo
    ("dpo-beta", ["dpo", "--set", "beta=0"], r"dpo.beta must be > 0, got 0.0"),
    ("dpo-old-key", ["dpo", "--set", "dpo_batch_size=4"], r"unknown key 'dpo_batch_size'; did you mean 'batch_size'\?"),
    (
        "dpo-schedule-without-reference",
        ["dpo", "--reference", "none", "--set", "reference_schedule=soft"],
        r"dpo.reference_schedule is soft but dpo.reference is none",
    ),
    (
        "dpo-pair-incomplete",
        ["dpo", "--init", "{model}", "--data", "empty_prompt.jsonl"],
        r"empty_prompt.jsonl row 1: missing field 'chosen'",
    ),
    ("dpo-prefs-missing", ["dpo", "--init", "{model}", "--data", "nope.jsonl"], r"data file nope.jsonl does not exist"),
    (
        "dpo-output-inside-init",
        ["dpo", "--init", "{model}", "--data", "{prefs}", "--output-dir", "{model}/dpo"],
        r"lies inside the input dpo.init",
    ),
    # --- salsa eval
    ("eval-no-policies", ["eval"], r"eval.policies is empty"),
    ("eval-policy-without-name", ["eval", "-p", "{model}"], r"--policy '.*': expected NAME=MODEL_DIR"),
    ("eval-policy-missing", ["eval", "-p", "a=nope"], r"eval.policies: nope is not a model directory"),
    (
        "eval-output-is-policy",
        [*EVAL, "--output-dir", "{model}"],
        r"the output directory .* is the input eval.policies",
    ),
    ("eval-comparison", [*EVAL, "--set", "comparisons=[a:zzz]"], r"eval.comparisons: 'a:zzz' must be 'a:b'"),
    (
        "eval-landscape-one",
        [*EVAL, "--set", "landscape_models=[{model}]"],
        r"eval.landscape_models needs exactly two models",
    ),
    ("eval-confidence", [*EVAL, "--set", "confidence=1.5"], r"eval.confidence must lie in \(0, 1\)"),
    ("eval-no-judge", [*EVAL, "--set", "task=null"], r"eval: set reward_model, task or judge"),
    ("eval-judge-missing", [*EVAL, "--judge", "no/judge"], r"eval.judge: .*no/judge"),
    (
        "eval-judge-template-missing",
        [*EVAL, "--judge", "{model}", "--judge-template", "nope.txt"],
        r"eval.judge_template: judge template nope.txt does not exist",
    ),
    (
        "eval-judge-template-placeholder",
        [*EVAL, "--judge", "{model}", "--judge-template", "template.txt"],
        r"eval.judge_template \(template.txt\): the judge template lacks \{response_b\}",
    ),
    (
        "eval-judge-template-alone",
        [*EVAL, "--judge-template", "template.txt"],
        r"eval.judge_template is set but eval.judge is null",
    ),
    ("eval-prompts-missing", [*EVAL, "--set", "prompts=nope.jsonl"], r"data file nope.jsonl does not exist"),
    (
        "eval-references-no-set",
        [*EVAL, "--judge", "{model}", "--set", "comparisons=[a:references]"],
        r"eval.comparisons: 'a:references' needs the reference answers of a standard set, but neither eval.prompts "
        r"\(.*prompts.jsonl\) nor eval.ood_prompts \(null\) has any; sets with references: mt-bench, arena-hard, "
        r"alpaca-eval",
    ),
    (
        "eval-mt-bench-turns-no-set",
        [*EVAL, "--set", "mt_bench_turns=2"],
        r"eval.mt_bench_turns is 2 but neither eval.prompts \(.*prompts.jsonl\) nor eval.ood_prompts \(null\) is "
        r"mt-bench; set one of them to mt-bench, or mt_bench_turns to 1",
    ),
    (
        "eval-references-no-judge",
        [*EVAL, "--set", "prompts=alpaca-eval", "--set", "comparisons=[a:references]"],
        r"eval.comparisons: 'a:references' is judged by the LLM judge only; name it \(--judge MODEL\)",
    ),
    ("eval-bootstrap", [*EVAL, "--set", "bootstrap_samples=10"], r"eval.bootstrap_samples must be >= 100"),
    (
        "eval-sweep-unknown-model",
        [*EVAL, "--set", "sweeps={{s: {{method: expo, models: [sft, a], values: [0.5]}}}}"],
        r"eval.sweeps.s.models: 'sft' is not one of a \(the policies, and sft_model / soup_model when they are set\)",
    ),
    (
        "eval-sweep-value",
        [*EVAL, "-p", "b={model}", "--set", "sweeps={{s: {{method: liti, models: [a, b], values: [1.5]}}}}"],
        r"eval.sweeps.s.values=1.5 lies outside \[0, 1\]; liti stays between the two models",
    ),
    (
        "eval-sweep-method",
        [*EVAL, "-p", "b={model}", "--set", "sweeps={{s: {{method: ties, models: [a, b], values: [0.5]}}}}"],
        r"eval.sweeps.s.method must be one of expo, liti, slerp, got 'ties'",
    ),
    # --- salsa report
    ("report-no-results", ["report", "mine"], r"mine/results.json does not exist; run `salsa eval` first"),
    ("report-corrupt-results", ["report", "eval_bad"], r"eval_bad/results.json: corrupt results"),
    ("report-old-results", ["report", "eval_old"], r"eval_old/results.json: written before verdicts by the rule"),
    (
        "report-out-is-eval",
        ["report", "eval_good", "--out", "eval_good"],
        r"the output directory eval_good is the input report.eval_dir",
    ),
    ("report-out-is-file", ["report", "eval_good", "--out", "a_file.txt"], r"a_file.txt is a file, not a directory"),
    ("report-out-foreign", ["report", "eval_good", "--out", "mine"], r"mine holds files salsa did not write"),
    # --- salsa run
    (
        "run-misspelled-section",
        ["run", "run_misspelled.yaml"],
        r"run_misspelled.yaml: unknown section 'rll'; did you mean 'rl'",
    ),
    ("run-unsectioned-set", ["run", "--set", "steps=3"], r"every key needs its section"),
    ("run-seeds-zero", ["run", "--seeds", "0"], r"run.seeds must be >= 1, got 0"),
    ("run-arm", ["run", "--set", "run.arms={{ppo: 'sft-0:dpo'}}"], r"run.arms.ppo: 'sft-0:dpo' must be INIT:REFERENCE"),
    ("run-one-sft", ["run", "--set", "sft.num_models=1"], r"a soup needs K >= 2 models"),
    (
        "run-shared-normalisation-overridden",
        ["run", "--set", "run.reward_normalisation=shared", "--set", "rl.reward_normalisation=none"],
        r"run.reward_normalisation is shared, one normalisation measured for every RL run, but rl.reward_normalisation "
        r"is none",
    ),
    ("run-dpo", ["run", "--set", "rl.algorithm=dpo"], r"rl.algorithm must be one of ppo, rloo, grpo \(DPO is its own"),
    (
        "run-dpo-section",
        ["run", "--set", "dpo.beta=0.2"],
        r"dpo: `salsa run` compares online RL arms and trains no DPO",
    ),
    ("run-bad-later-stage", ["run", "--set", "rl.learning_rate=0"], r"rl.learning_rate must be > 0"),
    ("run-output-foreign", ["run", "--output-dir", "mine"], r"mine holds files salsa did not write"),
]


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_user_mistake_is_one_line_naming_it_and_changes_nothing(w, salsa_main, argv, message):
    argv = [a.format(**vars(w)) for a in argv]
    before = _tree(w.root)
    code, _, err = salsa_main(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err
    assert _tree(w.root) == before


def test_the_catalogue_covers_every_stage_and_the_docs_list_it():
    from pathlib import Path

    assert len(CASES) >= 60
    stages = {argv[0] for _, argv, _ in CASES}
    assert stages == {"sft", "soup", "data", "reward", "rl", "dpo", "eval", "report", "run"}
    docs = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    missing = [name for name, _, _ in CASES if f"`{name}`" not in docs]
    assert not missing, f"docs/errors.md does not list {missing}"
