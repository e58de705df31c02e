"""Shared fixtures: a real tokenizer (the default model's) and tiny random Llama models built in code."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on a 2-core machine: one thread each (and in the processes a test
    # launches), or their thread pools would fight over the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


# The test files that take longest, longest first: `make test` runs two pytest-xdist workers, each taking whole files
# in collection order (`--dist loadfile`, reordering off: pytest_configure), so these start at once and the short
# files fill in around them. Ordered by their CPU-seconds, each file run alone, 2026-12-07 (user + sys of pytest and
# what it launches; test_ray's Ray job processes, which no test process waits for, sampled from /proc): test_ray
# first, whose worker builds tiny_study (about 75 CPU-s) while the other runs test_distributed; the other files that
# read the study come after its build. A stale order costs minutes, never a result.
LONGEST_FILES = (
    "test_ray.py",
    "test_distributed.py",
    "test_rl.py",
    "test_documented_commands.py",
    "test_rl_learning.py",
    "test_gpu_checks.py",
    "test_study.py",
    "test_pipeline.py",
    "test_sft.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist (3.8) otherwise hands out the files with the most tests first, whatever the collection order:
    # the heavy files with few tests (test_ray 4, test_gpu_checks 2, test_study 6, test_distributed 8) came last.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@pytest.fixture(scope="session")
def tokenizer():
    from salsa.models import load_tokenizer

    # Converts the shipped GGUF once per cache; later runs reuse the safetensors directory.
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """The tiny base model, one directory for every worker: a stage's fingerprint holds its model's path, so a test
    that reuses the tiny study's finished stages needs the very path the study was built with."""
    from salsa.models import save_tiny_model

    return _built_once(tmp_path_factory, "tiny", lambda root: save_tiny_model(root / "base", tokenizer, seed=0))


@pytest.fixture(scope="session")
def sampled_token_counts(tokenizer):
    """count(model_dir, prompts): how often each token appears in the model's samples (8 per prompt, 8 new tokens
    each); a rule reward built on the frequent ones is one the model can learn to earn more of."""
    from collections import Counter

    from salsa.generation import sample_responses
    from salsa.models import load_causal_lm

    def count(model_dir, prompts) -> Counter:
        model = load_causal_lm(str(model_dir))
        samples = sample_responses(model, tokenizer, prompts, num_samples=8, max_new_tokens=8)
        return Counter(t for rs in samples for r in rs for t in tokenizer.encode(r, add_special_tokens=False))

    return count


@pytest.fixture()
def tiny_sft_config(tiny_model_dir, tmp_path):
    from salsa import SFTConfig

    return SFTConfig(
        model=str(tiny_model_dir),
        output_dir=str(tmp_path / "sft"),
        max_steps=6,
        batch_size=4,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        max_length=64,
        num_models=1,
    )


@pytest.fixture()
def interrupt(monkeypatch):
    """`restore = interrupt("salsa.sft.token_cross_entropy_sum", at_call=7)`: that function raises
    KeyboardInterrupt on its 7th call (a kill in the middle of a stage); `restore()` puts the real one back."""
    import importlib

    def arm(target: str, at_call: int):
        module_name, name = target.rsplit(".", 1)
        module = importlib.import_module(module_name)
        real, calls = getattr(module, name), {"n": 0}

        def dying(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == at_call:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, dying)
        return lambda: monkeypatch.setattr(module, name, real)

    return arm


@pytest.fixture()
def salsa_main(capfd):
    """Run `salsa ARGV` in this process, as a user's shell would: returns (exit code, stdout, stderr)."""
    from salsa.cli import main

    def run(argv: list[str]) -> tuple[int, str, str]:
        capfd.readouterr()
        saved, sys.argv = sys.argv, ["salsa", *argv]
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            sys.argv = saved
        out = capfd.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, tiny_model_dir):
    """One finished tiny study, for every test that reads one (a test that changes a run copies it first): the 2 x 2
    of docs/results/salsa-vs-ppo-cpu (arms salsa, ppo, init-soup, ref-soup; 2 seeds each, the headline salsa against
    ppo) on tiny models. Built the way a sharded study is: shard 0 of 2 in `run`, archived as it stood then into
    `after-shard-0/` (a study folder of data only); shard 1 of 2 in `shard-1`, a run directory of its own (its base
    stages made again: tests/test_task.py checks the two data stages are the same); then `run` finished (shard 1's
    jobs, the evaluation and the report).

    Returns root, holding run.yaml (the study's config), run/, shard-1/, shard-1.yaml and after-shard-0/."""
    return _built_once(tmp_path_factory, "tiny-study", lambda root: _build_tiny_study(root, tiny_model_dir))


def _built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(root)`'s result, built once per session: under pytest-xdist the first worker to get here builds it in
    the directory the workers share, and the others wait for it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    import fcntl

    root = tmp_path_factory.getbasetemp().parent / name
    with open(root.parent / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "built").exists():
            root.mkdir(exist_ok=True)
            (root / "result").write_text(str(build(root)))
            (root / "built").touch()
    return Path((root / "result").read_text())


def _build_tiny_study(root: Path, tiny_model_dir: Path) -> Path:
    import yaml

    from salsa.pipeline import run_pipeline
    from salsa.study import archive

    arms = {"salsa": "soup:soup", "ppo": "sft-0:sft-0", "init-soup": "soup:sft-0", "ref-soup": "sft-0:soup"}
    config = {
        "run": {"output_dir": str(root / "run"), "seeds": 2, "arms": arms},
        "data": {"model": str(tiny_model_dir), "samples_per_prompt": 2, "max_new_tokens": 6},
        "reward": {"backbone": "causal", "model": str(tiny_model_dir), "num_epochs": 0.2, "max_length": 64},
        "sft": {"model": str(tiny_model_dir), "max_steps": 2, "batch_size": 4, "max_length": 64},
        "rl": {"steps": 2, "prompts_per_step": 4, "max_new_tokens": 6, "learning_rate": 1e-3},
        "eval": {"max_new_tokens": 6, "landscape_alphas": [0.0, 0.5, 1.0], "bootstrap_samples": 200},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # the arms' order: the headline first
    assert run_pipeline(root / "run.yaml", show_progress=False, shard="0/2") is None  # no eval: jobs missing
    archive(root / "run", root / "after-shard-0")
    config["run"]["output_dir"] = str(root / "shard-1")
    (root / "shard-1.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert run_pipeline(root / "shard-1.yaml", show_progress=False, shard="1/2") is None
    run_pipeline(root / "run.yaml", show_progress=False)
    return root
