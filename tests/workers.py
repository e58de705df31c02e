"""Entry points the 2-process tests launch with torchrun (and once with a single process, to compare).

python -m torch.distributed.run --standalone --nproc_per_node 2 tests/workers.py batch JOBS_JSON
python -m torch.distributed.run --standalone --nproc_per_node 2 tests/workers.py kill-last-rank STEP SALSA_ARGS...
"""

import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path

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


def rl(config: dict) -> None:
    """RL on one or several processes, whose rollouts sample from logits that differ by rounding: they draw
    tokens with `rounding_proof_sample`, so both update from the same samples (what the test compares). The real
    sampler is put back after, for the jobs that follow in the same process."""
    import salsa.generation
    from salsa.config import RLConfig
    from salsa.rl.ppo import train_rl

    real, salsa.generation.inverse_cdf_sample = salsa.generation.inverse_cdf_sample, rounding_proof_sample
    try:
        train_rl(RLConfig(**config), show_progress=False, reward_fn=length_reward)
    finally:
        salsa.generation.inverse_cdf_sample = real


def salsa_command(args: list[str]) -> None:
    """`salsa ARGS`, as `python -m salsa.cli ARGS` runs it."""
    import salsa.cli

    sys.argv = ["salsa", *args]
    salsa.cli.main()


def run_job(job: dict) -> dict:
    """One job: {"name", "salsa": [args]} or {"name", "rl": {config}}. Its exit code (a traceback for a bug, as an
    uncaught exception prints it) and what it printed."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            salsa_command(job["salsa"]) if "salsa" in job else rl(job["rl"])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except Exception:
            traceback.print_exc()
            code = 1
    return {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def batch(jobs_json: str) -> None:
    """Several runs in one launch, in order: every launch starts torch anew in each of its processes, most of a tiny
    run's time. Each job's outcome goes to DIR/NAME.rank-R.json beside the jobs file."""
    jobs_file = Path(jobs_json)
    rank = int(os.environ.get("RANK", "0"))
    for job in json.loads(jobs_file.read_text()):
        outcome = run_job(job)
        (jobs_file.parent / f"{job['name']}.rank-{rank}.json").write_text(json.dumps(outcome))


def kill_last_rank(step: str, *args: str) -> None:
    """`salsa ARGS` on every process, the last rank dying by SIGKILL once its checkpoint of `step` is on disk (a
    lost worker, at a known step: no race between the run's end and a kill from outside)."""
    from salsa.checkpoint import FAULT_KILL_AT_STEP

    if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
        os.environ[FAULT_KILL_AT_STEP] = step
    salsa_command(list(args))


if __name__ == "__main__":
    {"batch": batch, "kill-last-rank": kill_last_rank}[sys.argv[1]](*sys.argv[2:])
