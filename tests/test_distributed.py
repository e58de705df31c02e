"""Two CPU processes under torchrun (gloo) against one process with the same global batch.

The 2-process runs are launched with `python -m torch.distributed.run --standalone --nproc_per_node 2`, the way a
user launches salsa on several GPUs; the 1-process runs use one thread, as each of the two processes does (torchrun's
default). The runs the tests compare share two launches, one of 2 processes and one of 1 (tests/workers.py batch:
each run as `python -m salsa.cli` runs it, its exit code and output recorded; the killed rank's rerun among them);
the run whose rank is killed and `salsa run --num-processes 2` launch their own.

Numbers agree to float rounding, not bit for bit: a process that computes a batch of another shape, or the same
batch with its weights at another memory alignment (measured: MKL's matrix product rounds differently), gets
logits a few 1e-6 apart. A sampled token can then differ where its uniform draw falls within that rounding of the
boundary between two tokens' cumulative probabilities (measured with these tiny models: about 1 draw in 800 at
temperature 0.7). The tests compare what holds: numbers with tolerances; data make's and eval's samples, which
agree but for such rare tokens (a bug in dealing out, seeding or gathering the batches changes most); and RL
updates from the same samples, drawn in the worker by a sampler that rounding does not move.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from salsa.models import save_tiny_model

WORKERS = str(Path(__file__).parent / "workers.py")
PROMPTS = ["Say something.", "Write a word.", "Tell me a story.", "Describe the sea.",
           "Name a colour.", "Count to three.", "Greet me.", "Sing a song."]  # fmt: skip


def _env():
    # CPU tests (gloo): on a machine with one GPU, two processes would both take it.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def _launch(args, processes, cwd, check=True, timeout=300):
    if processes == 1:
        command = [sys.executable, *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            *args,
        ]
    job = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # torchrun's workers too, not only torchrun
        raise
    result = subprocess.CompletedProcess(command, job.returncode, stdout, stderr)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _salsa(*args):
    return ["-m", "salsa.cli", *args]


def _weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def _close(a, b, atol=1e-5):
    return a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= atol


def _rl_weights_agree(init, one, two):
    """Final RL weights of two runs from `init`: all but 1 in 100,000 agree to float rounding (2e-5), and the rest
    by less than twice the largest distance any weight moved from `init` in `one`. Adam divides each gradient element
    by its own scale, so an element whose gradient is at rounding level (an embedding row of a token barely seen)
    moves by up to a whole step (~the learning rate) either way, as rounding signs its gradient: measured, one such
    element a run, 3.5e-5 (transformers 5.25) and 1.5e-4 (5.0) of a largest move of 8e-3. A bug in dealing out,
    reducing or scaling the batch moves most weights, not a few."""
    assert one.keys() == two.keys() == init.keys()
    differences = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
    largest_move = max(float((one[k] - init[k]).abs().max()) for k in one)
    outliers = differences[differences > 2e-5]
    assert len(outliers) <= differences.numel() // 100_000, f"{len(outliers)} weights differ by over 2e-5"
    assert float(differences.max()) < 2 * largest_move, (float(differences.max()), largest_move)


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _same_but_rare_samples(one, two, sample, derived=(), close=()):
    """Rows of two runs (in order) that drew the same samples but for rare tokens at a rounding boundary: every
    field but the sampled text `sample` and what is computed from it agrees, at least 97% of the samples agree, and
    where they do, the `derived` fields agree exactly and the model-computed `close` ones to float rounding.
    Returns whether every sample agreed."""
    assert len(one) == len(two)
    varying = {sample, *derived, *close}
    agreed = 0
    for a, b in zip(one, two, strict=True):
        assert {k: v for k, v in a.items() if k not in varying} == {k: v for k, v in b.items() if k not in varying}
        if a[sample] == b[sample]:
            agreed += 1
            assert all(a[k] == b[k] for k in derived if k in a), (a, b)
            assert all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5) for k in close if k in a), (a, b)
    assert agreed >= 0.97 * len(one), f"{len(one) - agreed} of {len(one)} samples differ"
    return agreed == len(one)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("dp")
    save_tiny_model(root / "tiny", tokenizer, seed=0, initializer_range=0.5)
    save_tiny_model(root / "tiny2", tokenizer, seed=1, initializer_range=0.5)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return root


SFT = ["sft", "--model", "tiny", "-q", "--set", "max_steps=4", "--set", "learning_rate=3e-3", "--set", "warmup_ratio=0",
       "--set", "max_length=64", "--set", "num_models=1", "--set", "save_steps=2"]  # fmt: skip
# The RL runs compared: each process rolls out a batch of another shape, so the logits differ by rounding; the worker
# draws tokens by Gumbel-max (workers.rounding_proof_sample), which rounding changes only at a near-tie, so that both
# runs update from the same samples. Several minibatches per epoch: a real PPO update.
RL = dict(init="tiny", reference="ema", prompts="prompts.jsonl", task=None, steps=2, prompts_per_step=4,
          samples_per_prompt=2, max_new_tokens=6, learning_rate=1e-3, kl_coef=0.1, save_steps=0, minibatch_size=4,
          ppo_epochs=2, log_completions_steps=1)  # fmt: skip
# No nucleus (top_p 1): its sort of the 49k-token vocabulary was most of a data make's time, and it is the same
# row by row on 1 process as on 2 (test_rl and test_task cover it).
DATA = ["data", "make", "--model", "tiny", "-q", "--set", "samples_per_prompt=2", "--set", "max_new_tokens=5",
        "--set", "top_p=1.0"]  # fmt: skip
EVAL_SETTINGS = ["prompts=data2/prompts_eval.jsonl", "ood_prompts=data2/prompts_ood.jsonl", "reward_model=null",
                 "sft_model=tiny", "soup_model=null", "landscape_models=[tiny,tiny2]", "batch_size=16",
                 "landscape_alphas=[0.0,0.5,1.0]", "max_new_tokens=5", "bootstrap_samples=200"]  # fmt: skip
EVAL = ["eval", "-p", "a=tiny", "-p", "b=tiny2", "-q", *[x for s in EVAL_SETTINGS for x in ("--set", s)]]
# One rank of this run dies once its checkpoint of step 2 (of 4) is on disk; the rerun resumes from it.
KILLED_AT_STEP = 2


def _sft2(sharding: str, output_dir: str) -> list[str]:
    """A 2-process SFT run: half the 1-process run's batch on each process."""
    return [*SFT, "--output-dir", output_dir, "--set", "batch_size=2", "--set", f"sharding={sharding}"]


def _jobs(processes: int) -> list[dict]:
    """The runs the tests compare, on `processes` processes: {"name", "salsa": ARGS} runs `salsa ARGS`, {"name", "rl":
    CONFIG} RL with workers.length_reward as the reward."""
    n = processes
    if n == 1:
        sft = [{"name": "sft1", "salsa": [*SFT, "--output-dir", "sft1", "--set", "batch_size=4"]}]
    else:
        sft = [{"name": f"sft2-{s}", "salsa": _sft2(s, f"sft2-{s}")} for s in ("none", "fsdp2")]
    rl = [{"name": f"rl-{a}-{n}", "rl": {**RL, "algorithm": a, "output_dir": f"rl-{a}-{n}"}} for a in ("rloo", "ppo")]
    # Both evaluations read the 2-process run's prompts (the tests check they are the 1-process run's, byte for byte).
    stages = [{"name": f"data{n}", "salsa": [*DATA, "--output-dir", f"data{n}"]},
              {"name": f"eval{n}", "salsa": [*EVAL, "--output-dir", f"eval{n}"]}]  # fmt: skip
    if n == 1:  # a 2-process run's checkpoint, resumed on 1 process (see _as_if_interrupted)
        return [*sft, *rl, *stages, {"name": "world-resumed", "salsa": [*SFT, "--set", "batch_size=2", "--output-dir",
                                                                        "world"]}]  # fmt: skip
    return [*sft, *rl, *stages, {"name": "killed", "salsa": _sft2("fsdp2", "killed")}]  # the killed run's rerun


def _as_if_interrupted(run: Path) -> None:
    """Make a finished 2-process SFT run look interrupted after its step-2 checkpoint: the marker gone, a checkpoint
    of 2 processes left."""
    (run / "sft-0/salsa_complete.json").unlink()
    (run / "salsa_complete.json").unlink()
    checkpoint = run / "sft-0/checkpoints/step-0000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text(json.dumps({"optimizer": {"param_groups": [], "scalars": {}},
                                                       "scheduler": None, "counters": {"seed": 0, "world_size": 2,
                                                       "step": 2, "micro_step": 2}}))  # fmt: skip
    for name in ("weights", "optimizer", "rng"):
        save_file({"state/0/step": torch.zeros(1)}, str(checkpoint / f"{name}.safetensors"))


def _batch(work: Path, processes: int) -> dict[str, dict]:
    """The jobs of `_jobs(processes)`, in one launch (every launch starts torch anew in each process, most of a
    tiny run's time): name -> {"codes": each process's exit code, "stdout", "stderr": every process's, in order}."""
    jobs = _jobs(processes)
    folder = work / f"batch-{processes}"
    folder.mkdir()
    (folder / "jobs.json").write_text(json.dumps(jobs))
    _launch([WORKERS, "batch", str(folder / "jobs.json")], processes, work, timeout=300 * len(jobs))  # 300 s a run
    outcomes = {}
    for job in jobs:
        ranks = [json.loads((folder / f"{job['name']}.rank-{r}.json").read_text()) for r in range(processes)]
        outcomes[job["name"]] = {"codes": [r["code"] for r in ranks], "stdout": "".join(r["stdout"] for r in ranks),
                                 "stderr": "".join(r["stderr"] for r in ranks)}  # fmt: skip
    return outcomes


@pytest.fixture(scope="module")
def runs(work):
    """Every run the comparisons below read: a 2-process SFT run one of whose ranks dies (`killed-rank`: its exit
    code, output and what it left), then the 2-process runs in one torchrun launch (its rerun among them), then
    their 1-process counterparts in one process."""
    died = _launch([WORKERS, "kill-last-rank", str(KILLED_AT_STEP), *_sft2("fsdp2", "killed")], 2, work,
                   check=False)  # fmt: skip
    run = work / "killed/sft-0"
    killed = {"code": died.returncode, "stderr": died.stderr,
              "checkpoints": sorted(p.name for p in (run / "checkpoints").glob("step-*")),
              "finished": (run / "model.safetensors").exists(),
              "metrics": _records(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []}  # fmt: skip
    two = _batch(work, 2)
    if two["sft2-none"]["codes"] == [0, 0]:  # else its test says why
        shutil.copytree(work / "sft2-none", work / "world")
        _as_if_interrupted(work / "world")
    return {**two, **_batch(work, 1), "killed-rank": killed}


def _finished(runs, *names):
    for name in names:
        assert set(runs[name]["codes"]) == {0}, f"{name}:\n{runs[name]['stderr'][-3000:]}"
    return [runs[name] for name in names]


@pytest.mark.parametrize("sharding", ["none", "fsdp2"])
def test_two_process_sft_equals_one_process_with_the_same_global_batch(work, runs, sharding):
    one, two = _finished(runs, "sft1", f"sft2-{sharding}")
    assert two["stdout"].split() == [f"sft2-{sharding}/sft-0"]  # each output printed once
    assert one["stdout"].split() == ["sft1/sft-0"]
    assert _close(_weights(work / "sft1/sft-0"), _weights(work / f"sft2-{sharding}/sft-0"))
    # The same learning-rate schedule (not N times too fast) and the global loss and token counts.
    one_log, two_log = (
        _records(work / "sft1/sft-0/metrics.jsonl"),
        _records(work / f"sft2-{sharding}/sft-0/metrics.jsonl"),
    )
    assert [r["lr"] for r in one_log] == [r["lr"] for r in two_log]
    assert [r["tokens"] for r in one_log] == [r["tokens"] for r in two_log]
    assert [r["loss"] for r in one_log] == pytest.approx([r["loss"] for r in two_log], rel=1e-5)
    assert (
        not list((work / f"sft2-{sharding}/sft-0/tensorboard").glob("*"))
        or len(list((work / f"sft2-{sharding}/sft-0/tensorboard").glob("events*"))) == 1
    )  # one TensorBoard file: only the main process logs


@pytest.mark.parametrize("algorithm", ["rloo", "ppo"])
def test_two_process_rl_steps_equal_one_process_with_the_same_global_batch(work, runs, algorithm):
    _finished(runs, f"rl-{algorithm}-1", f"rl-{algorithm}-2")  # train_rl also checks that both ranks end equal
    one, two = (_records(work / f"rl-{algorithm}-{n}/metrics.jsonl") for n in (1, 2))
    # The policies of step 2 agree to ~1e-5 per weight (measured with AVX2, AVX-512 and plain kernels) but for a
    # few elements (_rl_weights_agree), their numbers to ~1e-5 (KL, losses).
    for key in ("reward", "kl_ref", "policy_loss", "approx_kl", "entropy", "response_length"):
        assert [r[key] for r in one] == pytest.approx([r[key] for r in two], rel=1e-4, abs=5e-5), key
    one_final, two_final = (_weights(work / f"rl-{algorithm}-{n}/final") for n in (1, 2))
    _rl_weights_agree(_weights(work / "tiny"), one_final, two_final)
    # The completions table holds every process's samples once, in the order of the step's global batch.
    one, two = (_records(work / f"rl-{algorithm}-{n}/completions.jsonl") for n in (1, 2))
    assert len(one) == 2 * 4 * 2 and [(r["step"], r["prompt"], r["response"]) for r in one] == [
        (r["step"], r["prompt"], r["response"]) for r in two
    ]
    assert [r["reward"] for r in one] == pytest.approx([r["reward"] for r in two], rel=1e-4, abs=5e-5)


def test_two_process_data_and_eval_write_what_one_process_writes(work, runs):
    _finished(runs, "data1", "data2")
    for name in ("prompts_train.jsonl", "prompts_eval.jsonl", "prompts_ood.jsonl"):  # no model involved
        assert (work / "data1" / name).read_bytes() == (work / "data2" / name).read_bytes(), name
    one, two = (_records(work / f"data{n}/samples.jsonl") for n in (1, 2))
    samples_agree = _same_but_rare_samples(one, two, "response", derived=("gold",))
    one, two = (_records(work / f"data{n}/sft.jsonl") for n in (1, 2))
    _same_but_rare_samples(one, two, "completion", derived=("gold",))
    if samples_agree:  # the pairs and their labels are drawn from the samples, the same way by one process
        for name in ("prefs.jsonl", "prefs_dev.jsonl", "datasheet.md"):
            assert (work / "data1" / name).read_bytes() == (work / "data2" / name).read_bytes(), name
    _finished(runs, "eval1", "eval2")
    one, two = (_records(work / f"eval{n}/samples.jsonl") for n in (1, 2))
    _same_but_rare_samples(one, two, "response", derived=("length", "gold"), close=("kl_sft",))


def test_a_killed_rank_ends_the_job_and_a_rerun_resumes(work, runs):
    killed = runs["killed-rank"]
    assert killed["code"] != 0 and "Signal 9 (SIGKILL)" in killed["stderr"]  # the job ends, saying why
    assert killed["checkpoints"] == [f"step-{KILLED_AT_STEP:07d}"] and not killed["finished"]
    # The rerun resumes from the checkpoint and ends where the same run, never killed (sft2-fsdp2), ends.
    _finished(runs, "sft2-fsdp2", "killed")
    assert _close(_weights(work / "sft2-fsdp2/sft-0"), _weights(work / "killed/sft-0"))
    logged = _records(work / "killed/sft-0/metrics.jsonl")
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    # Resumed, not restarted: the killed attempt's records up to its checkpoint are kept (a rerun from scratch
    # would log other throughputs, tokens_per_s).
    kept = [r for r in killed["metrics"] if r["step"] <= KILLED_AT_STEP]
    assert kept and logged[: len(kept)] == kept


def test_a_checkpoint_resumes_only_on_the_world_size_it_was_saved_with(runs):
    # A copy of the 2-process run sft2-none, made to look interrupted (_as_if_interrupted), rerun on 1 process.
    _finished(runs, "sft2-none")
    resumed = runs["world-resumed"]
    assert resumed["codes"] == [2]
    assert "seed 0, 2 processes; this one has seed 0, 1 process" in resumed["stderr"]


def test_salsa_run_launches_its_processes_and_writes_each_file_once(work):
    (work / "run.yaml").write_text(
        "run: {output_dir: run2, seeds: 1}\n"
        "data: {model: tiny, samples_per_prompt: 2, max_new_tokens: 5, top_p: 1.0}\n"  # as DATA: no nucleus sort
        "reward: {backbone: causal, model: tiny, num_epochs: 0.2, max_length: 64}\n"
        "sft: {model: tiny, max_steps: 2, batch_size: 2, max_length: 64}\n"
        "rl: {steps: 2, prompts_per_step: 4, max_new_tokens: 5, learning_rate: 1.0e-3}\n"
        "eval: {max_new_tokens: 5, landscape_alphas: [0.0, 0.5, 1.0], bootstrap_samples: 200}\n"
    )
    # The whole pipeline on 2 processes: ~1 min alone, several on a machine shared with other work.
    result = _launch(_salsa("run", "run.yaml", "--num-processes", "2", "-q"), 1, work, timeout=900)
    assert result.stderr.count("verdict:") == 1  # the summary, printed by the main process only
    steps = [r["step"] for r in _records(work / "run2/rl/salsa/seed-0/metrics.jsonl")]
    assert steps == [1, 2]  # logged once, not once per process
    assert (work / "run2/report/report.md").is_file() and (work / "run2/salsa_complete.json").is_file()
