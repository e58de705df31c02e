#!/usr/bin/env bash
# GPU checks, for a machine with one or more NVIDIA GPUs (run from the repository root after `make install`):
#   1. the device every stage uses is the GPU, and bf16 is what `mixed_precision: auto` picks;
#   2. SFT on the default model in bf16 (tokens/s), one process;
#   3. with 2+ GPUs: 2-process DDP SFT against 1 process with the same global batch, and FSDP2 against DDP;
#   4. an RL step (RLOO and the default PPO) on the GPU in bf16, and the 2-process RL step against 1 process;
#   5. the test suite's 2-process tests (gloo on the CPU) still pass beside the GPU.
# Prints one line per check; results/ holds the runs. Budget: ~5 minutes on one H100-class GPU.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/gpu-checks}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
echo "gpus: $GPUS ($($PY -c "import torch; print(torch.cuda.get_device_name(0))"))"
$PY - <<'PY'
import torch
from salsa import runtime
device = runtime.accelerator().device
assert device.type == "cuda", device
print(f"device: {device}; auto precision: {runtime.compute_dtype('auto')}")
PY
SFT=(-m salsa.cli sft -q --set max_steps=20 --set max_length=128 --set num_models=1 --set mixed_precision=bf16)
time $PY "${SFT[@]}" --output-dir "$OUT/sft1" --set batch_size=16
$PY -c "import json; r=[json.loads(l) for l in open('$OUT/sft1/sft-0/metrics.jsonl')][5:]; print('sft bf16 1 gpu tokens/s', round(len(r)/sum(1/x['tokens_per_s'] for x in r)))"
if [ "$GPUS" -ge 2 ]; then
  $PY -m torch.distributed.run --standalone --nproc_per_node 2 "${SFT[@]}" --output-dir "$OUT/sft2" --set batch_size=8
  $PY -m torch.distributed.run --standalone --nproc_per_node 2 "${SFT[@]}" --output-dir "$OUT/fsdp2" --set batch_size=8 --set sharding=fsdp2
  $PY - "$OUT" <<'PY'
import sys
from safetensors.torch import load_file
out = sys.argv[1]
a, b, c = (load_file(f"{out}/{d}/sft-0/model.safetensors") for d in ("sft1", "sft2", "fsdp2"))
print("ddp vs 1 gpu max |dw|", max(float((a[k] - b[k]).abs().max()) for k in a))
print("fsdp2 vs ddp max |dw|", max(float((b[k] - c[k]).abs().max()) for k in b))
PY
fi
for algorithm in rloo ppo; do
  # salsa's own sampler on the GPU (tests/workers.py's `rl` swaps in the tests' CPU-side sampler), with the tests'
  # length reward.
  $PY - "$algorithm" "$OUT" <<'PY'
import sys

sys.path.insert(0, "tests")
from workers import length_reward
from salsa.config import RLConfig
from salsa.rl.ppo import train_rl

algorithm, out = sys.argv[1:]
config = RLConfig(algorithm=algorithm, init=f"{out}/sft1/sft-0", reference="sft", prompts="tests/data/prompts.jsonl",
                  task=None, output_dir=f"{out}/rl-{algorithm}", steps=4, prompts_per_step=8, samples_per_prompt=2,
                  max_new_tokens=32, save_steps=0, mixed_precision="bf16")
train_rl(config, show_progress=False, reward_fn=length_reward)
PY
  $PY -c "import json; r=[json.loads(l) for l in open('$OUT/rl-$algorithm/metrics.jsonl')]; print('$algorithm bf16 tokens/s', round(r[-1]['tokens_per_s']), 'kl', round(r[-1]['kl_ref'], 4))"
done
# They are CPU tests (gloo): with the GPU visible, 2 processes on a 1-GPU machine both take it under NCCL and fail.
CUDA_VISIBLE_DEVICES= HF_HUB_OFFLINE=1 $PY -m pytest -q -p no:cacheprovider tests/test_distributed.py
