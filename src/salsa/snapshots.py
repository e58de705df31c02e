"""Policy snapshots along an RL run, so that runs can be compared at equal KL from the SFT model: RL writes them,
the evaluation reads them.

A snapshot holds only the weights RL trains (the LoRA adapters, or every weight without LoRA) as
`snapshots/step-NNNNNN.safetensors` in the run directory; the run's config.yaml says how to rebuild the
policy around them (its init model and LoRA settings).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from salsa.config import RLConfig
from salsa.config_loading import load_stage_config
from salsa.errors import DataError
from salsa.io import atomic_file
from salsa.logs import check_finite_weights
from salsa.policy import fresh_policy

SNAPSHOT_DIR = "snapshots"
_NAME = re.compile(r"step-(\d+)\.safetensors")


def save_snapshot(trained: dict[str, torch.Tensor], run_dir: Path, step: int) -> Path:
    """Write the policy's trainable weights at `step` (whole, from `runtime.trainable_state`), atomically."""
    path = run_dir / SNAPSHOT_DIR / f"step-{step:06d}.safetensors"
    check_finite_weights(trained, str(path))
    with atomic_file(path) as tmp:
        save_file({name: value.contiguous() for name, value in trained.items()}, str(tmp))
    return path


def list_snapshots(run_dir: str | Path) -> dict[int, Path]:
    """step -> snapshot file of a run, in step order (empty if it saved none)."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    found = {int(m.group(1)): p for p in folder.glob("step-*.safetensors") if (m := _NAME.fullmatch(p.name))}
    return dict(sorted(found.items()))


def load_snapshot(run_dir: str | Path, step: int) -> torch.nn.Module:
    """The policy of a run at `step`, as a plain causal LM (LoRA merged)."""
    run_dir = Path(run_dir)
    snapshots = list_snapshots(run_dir)
    if step not in snapshots:
        raise DataError(f"{run_dir}: no snapshot of step {step} (has {sorted(snapshots) or 'none'})")
    config = load_stage_config(RLConfig, "rl", run_dir / "config.yaml", recorded=True)
    policy = fresh_policy(config)
    params = dict(policy.named_parameters())
    weights = load_file(str(snapshots[step]))
    trainable = {name for name, p in params.items() if p.requires_grad}
    if set(weights) != trainable:
        odd = sorted(set(weights) ^ trainable)[0]
        raise DataError(f"{snapshots[step]}: weight '{odd}' does not match the policy of {run_dir / 'config.yaml'}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    return policy.merge_and_unload() if config.use_lora else policy
