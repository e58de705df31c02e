"""The command line as a user meets it: help, one-line errors, exit codes."""

import os
import subprocess
import sys

import pytest

SALSA = [sys.executable, "-m", "salsa.cli"]


def _run(*args, env=None):
    return subprocess.run([*SALSA, *args], capture_output=True, text=True, timeout=300, env=env)


def test_help_lists_every_stage_and_documents_config_keys():
    top = _run("--help")
    assert top.returncode == 0
    # Each command is a row of the Commands panel ("│ sft  Fine-tune ..."), not just a word of the description.
    listed = {
        line.strip("│ ").split()[0] for line in top.stdout.splitlines() if line.startswith("│ ") and line[2] != " "
    }
    assert {"sft", "soup", "data", "reward", "rl", "ppo", "eval", "report", "run", "demo"} <= listed
    sft_help = _run("sft", "--help").stdout
    for key in ("learning_rate", "grad_accum_steps", "use_lora", "save_steps", "--num-models"):
        assert key in sft_help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sft", "--set", "learning_rte=1e-4"], "unknown key 'learning_rte'; did you mean 'learning_rate'?"),
        (["sft", "--data", "/nonexistent.jsonl", "-q"], "data file /nonexistent.jsonl does not exist"),
        (["soup", "/nonexistent/a", "/nonexistent/b", "--out", "/tmp/x"], "/nonexistent/a is not a model directory"),
        (["soup", "a", "--weights", "1.0"], "at least two models"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args, message):
    result = _run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_soup_command_writes_a_model(tmp_path, tiny_model_dir):
    result = _run(
        "soup", str(tiny_model_dir), str(tiny_model_dir), "--out", str(tmp_path / "soup"), "-w", "0.5", "-w", "0.5"
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "soup" / "soup.json").is_file()


def test_a_bad_input_is_reported_before_any_model_loads_even_with_a_cold_cache(tmp_path):
    # The default model is converted into the cache on first use; a data mistake must not wait for that.
    cache = tmp_path / "cache"
    (tmp_path / "bad.jsonl").write_text('{"prompt": oops}\n')
    env = {**os.environ, "SALSA_CACHE": str(cache)}
    result = _run("sft", "--data", str(tmp_path / "bad.jsonl"), "--output-dir", str(tmp_path / "out"), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'bad.jsonl'} row 1: not valid JSON (Expecting value)"
    ]
    assert not cache.exists() and not (tmp_path / "out").exists()
