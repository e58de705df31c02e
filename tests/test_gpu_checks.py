"""benchmarks/gpu_checks.sh on the CPU (the GPU hidden), on a tiny model with tiny budgets: the whole chain it proves
on a GPU (`salsa run`: SFT K = 2, soup, PPO and SALSA referenced to the soup, evaluation, report) and its throughput
lines, so that the script cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import salsa

REPO = Path(__file__).parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_checks.sh"
# The chain at the study test's sizes (tests/test_study.py), smaller where the check needs no more: no landscape, soup
# health, matched KL or out-of-distribution prompts, and no nucleus sort over the tiny model's 49k-token vocabulary.
TINY_RUN = (
    "data.max_new_tokens=4 data.off_subject_samples=0 data.top_p=1.0 reward.num_epochs=0.2 reward.max_length=64 "
    "reward.restarts=0 sft.max_steps=2 sft.batch_size=4 sft.max_length=64 rl.steps=2 rl.prompts_per_step=2 "
    "rl.max_new_tokens=4 rl.normalisation_samples=8 rl.snapshot_steps=0 eval.max_new_tokens=4 eval.ood_prompts=null "
    "eval.bootstrap_samples=100 eval.landscape_alphas=[] eval.soup_health=false eval.matched_kl=false"
)
# The throughput runs at the chain's sizes: the lines are what is checked, not the numbers, and bf16 matrix products
# on a CPU without bf16 instructions run about 10 times slower than fp32 ones (the default sizes took 5 of 9 minutes).
TINY_THROUGHPUT = "sft.max_length=64 rl.prompts_per_step=2 rl.max_new_tokens=4 rl.normalisation_samples=8"


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # The salsa under test, whichever checkout it is, and the interpreter running the tests.
    path = os.pathsep.join(p for p in (str(Path(salsa.__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"} | {
        "PY": sys.executable, "PYTHONPATH": path, **env,
    }  # fmt: skip
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_the_whole_chain_and_the_throughput_lines_on_the_cpu(tiny_model_dir, tmp_path):
    out = tmp_path / "checks"
    env = {
        "CUDA_VISIBLE_DEVICES": "", "OUT": str(out), "MODEL": str(tiny_model_dir), "SFT_STEPS": "6", "RL_STEPS": "1",
        "SFT_BATCH": "2", "RUN_SET": TINY_RUN, "THROUGHPUT_SET": TINY_THROUGHPUT, "DISTRIBUTED_TESTS": "0",
    }  # fmt: skip
    result = run_script(env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()

    def line(pattern: str) -> re.Match:
        found = [m for m in map(re.compile(pattern).fullmatch, lines) if m]
        assert len(found) == 1, f"{pattern!r} in:\n{result.stdout}"
        return found[0]

    line(r"requirements: salsa \S+, torch \S+, transformers \S+; not installed: .+")
    line(r"gpus: 0 \(no GPU: the device and bf16 assertions and the multi-GPU part are skipped\)")
    assert not any(s.startswith(("device:", "ddp vs", "fsdp2 vs")) for s in lines)  # the GPU-only checks
    line(r"chain: salsa run in \d+ s")
    stages = line(r"chain stages \(s\): (.+)").group(1)
    assert [s.split()[0] for s in stages.split(", ")] == ["data", "reward", "sft", "soup", "eval"]
    line(r"chain salsa: 2 steps, \d+ tokens/s, kl to its reference \(soup\) \S+, to sft-0 \S+")
    line(r"chain ppo: 2 steps, \d+ tokens/s, kl to its reference \(sft\) \S+, to sft-0 \S+")
    report = line(r"chain report: (\S+); verdict: .+").group(1)
    assert Path(report) == out / "run" / "report" / "report.md" and Path(report).is_file()
    line(r"sft bf16 0 gpu tokens/s \d+")
    line(r"rloo bf16 tokens/s \d+ kl \S+")
    line(r"ppo bf16 tokens/s \d+ kl \S+")
    # Every stage ran in bf16 (the script asserts the soup of sft-0 and sft-1 and SALSA's reference to it).
    for stage in ("data", "reward", "sft", "eval"):
        assert "mixed_precision: bf16" in (out / "run" / stage / "config.yaml").read_text(), stage
    assert "mixed_precision: bf16" in (out / "run" / "rl" / "salsa" / "seed-0" / "config.yaml").read_text()
    # The throughput runs took the sizes the test gave them (SFT_BATCH, THROUGHPUT_SET).
    sft = yaml.safe_load((out / "sft1" / "config.yaml").read_text())["sft"]
    assert (sft["batch_size"], sft["max_length"]) == (2, 64), sft
    for algorithm in ("rloo", "ppo"):
        rl = yaml.safe_load((out / f"rl-{algorithm}" / "config.yaml").read_text())["rl"]
        assert (rl["algorithm"], rl["prompts_per_step"], rl["max_new_tokens"]) == (algorithm, 2, 4), rl


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run the checks on it")
def test_a_gpu_check_that_finds_no_gpu_stops_unless_the_gpu_is_hidden_on_purpose(tmp_path):
    result = run_script({"OUT": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "gpu_checks.sh: torch sees no GPU; set CUDA_VISIBLE_DEVICES= to run the checks on the CPU on purpose"
    )
    assert "chain" not in result.stdout
