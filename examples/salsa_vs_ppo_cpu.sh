#!/usr/bin/env bash
# The SALSA pipeline on the default model and the built-in task, offline, by hand (until `salsa run`):
# task data -> reward model -> 2 SFT seeds -> soup -> PPO (reference sft) and SALSA (reference soup).
# Usage: examples/salsa_vs_ppo_cpu.sh [RUN_DIR]   (about an hour on 2 CPU cores; stages already complete
# are reused, so an interrupted run continues where it stopped)
set -euo pipefail
RUN=${1:-runs/cpu}
salsa data make --output-dir "$RUN/data" -q
salsa reward --data "$RUN/data/prefs.jsonl" --eval-data "$RUN/data/prefs_eval.jsonl" --output-dir "$RUN/reward" -q
salsa sft --data "$RUN/data/sft.jsonl" --output-dir "$RUN/sft" --num-models 2 --max-steps 30 -q
salsa soup "$RUN/sft/sft-0" "$RUN/sft/sft-1" --out "$RUN/soup"
# Equal budgets and seeds; both log KL to sft-0 so their KL is comparable.
COMMON=(--reward-model "$RUN/reward/model" --steps 24 --set prompts="$RUN/data/prompts_train.jsonl"
        --set sft_model="$RUN/sft/sft-0" -q)
salsa rl --init "$RUN/sft/sft-0" --reference sft --output-dir "$RUN/rl-ppo" "${COMMON[@]}"
salsa rl --init "$RUN/soup" --reference soup --output-dir "$RUN/rl-salsa" "${COMMON[@]}"
