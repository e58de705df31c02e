"""Entry points the 2-process tests launch with torchrun (and once with a single process, to compare).

python -m torch.distributed.run --standalone --nproc_per_node 2 tests/workers.py rl CONFIG_JSON
"""

import json
import sys

import torch


def length_reward(prompts, responses):
    """A rule reward: longer responses score higher (ends the RL test's dependence on a reward model)."""
    return torch.tensor([len(r) / 10.0 for r in responses])


def rl(config_json: str) -> None:
    from salsa.config import RLConfig
    from salsa.rl.ppo import train_rl

    train_rl(RLConfig(**json.loads(config_json)), show_progress=False, reward_fn=length_reward)


def fsdp_sft(config_json: str) -> None:
    from salsa.config import SFTConfig
    from salsa.sft import train_sft

    train_sft(SFTConfig(**json.loads(config_json)), show_progress=False)


if __name__ == "__main__":
    {"rl": rl, "fsdp-sft": fsdp_sft}[sys.argv[1]](sys.argv[2])
