"""Entry points the 2-process tests launch with torchrun (and once with a single process, to compare).

python -m torch.distributed.run --standalone --nproc_per_node 2 tests/workers.py rl CONFIG_JSON
"""

import json
import sys

import torch


def length_reward(prompts, responses):
    """A rule reward: longer responses score higher (ends the RL test's dependence on a reward model)."""
    return torch.tensor([len(r) / 10.0 for r in responses])


def rounding_proof_sample(probs, uniform):
    """Stands in for salsa's inverse-CDF draw: Gumbel-max, the argmax of log p + Gumbel noise seeded by the row's
    uniform draw. Both draw from p; but the inverse CDF changes its token when rounding moves any of the ~49k
    boundaries of the cumulative sum across the uniform (about 1 draw in 1000 for logits 2e-6 apart), Gumbel-max
    only when the two best perturbed scores lie within rounding of each other."""
    tokens = []
    for p, u in zip(probs, uniform, strict=True):
        noise = torch.rand(p.shape, generator=torch.Generator().manual_seed(int(u * 2**53)), dtype=torch.float64)
        tokens.append(int((p.double().cpu().log() - (-noise.log()).log()).argmax()))
    return torch.tensor(tokens, device=probs.device)


def rl(config_json: str) -> None:
    """RL on one or several processes, whose rollouts sample from logits that differ by rounding: they draw
    tokens with `rounding_proof_sample`, so both update from the same samples (what the test compares)."""
    import salsa.generation
    from salsa.config import RLConfig
    from salsa.rl.ppo import train_rl

    salsa.generation.inverse_cdf_sample = rounding_proof_sample
    train_rl(RLConfig(**json.loads(config_json)), show_progress=False, reward_fn=length_reward)


def fsdp_sft(config_json: str) -> None:
    from salsa.config import SFTConfig
    from salsa.sft import train_sft

    train_sft(SFTConfig(**json.loads(config_json)), show_progress=False)


if __name__ == "__main__":
    {"rl": rl, "fsdp-sft": fsdp_sft}[sys.argv[1]](sys.argv[2])
