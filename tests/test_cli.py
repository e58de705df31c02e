"""The command line as a user meets it: help, one-line errors, exit codes."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from salsa.cli import app
from salsa.models import save_tiny_model

SALSA = [sys.executable, "-m", "salsa.cli"]


def _run(*args, env=None):
    return subprocess.run([*SALSA, *args], capture_output=True, text=True, timeout=300, env=env)


def test_help_lists_every_stage_and_documents_config_keys():
    top = _run("--help")
    assert top.returncode == 0
    # Each command is a row of the Commands section ("  sft  Fine-tune ..."), not just a word of the description.
    commands = top.stdout.split("\nCommands:\n")[1]
    listed = {line.split()[0] for line in commands.splitlines() if line.startswith("  ") and line[2] != " "}
    assert {"sft", "soup", "data", "reward", "rl", "ppo", "dpo", "eval", "report", "run", "demo"} <= listed
    bare = _run("data")  # a group alone prints its help, on stdout like --help
    assert "Commands:\n  make " in bare.stdout and not bare.stderr
    sft_help = _run("sft", "--help").stdout
    for key in ("learning_rate", "grad_accum_steps", "use_lora", "save_steps", "--num-models"):
        assert key in sft_help


def _commands(command, path=()):
    """Every command and subcommand of the app, with the words that call it."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_help_fits_80_columns_with_every_option_name_whole():
    walked = list(_commands(typer.main.get_command(app)))
    assert {("soup",), ("data", "make"), ("study", "render")} <= {path for path, _ in walked}
    for path, command in walked:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        assert max(len(line) for line in result.output.splitlines()) <= 80, path
        names = [n for p in command.params if p.param_type_name == "option" for n in (*p.opts, *p.secondary_opts)]
        for name in [*names, "--help"]:  # whole: not cut short ("--allow-extrapolat…") nor run into other text
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.output), (path, name, result.output)


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


def _tensors(model_dir):
    return {name: t for f in sorted(model_dir.glob("*.safetensors")) for name, t in load_file(str(f)).items()}


def test_soup_command_writes_the_weighted_average_and_names_its_ingredients(tmp_path, tiny_model_dir, tokenizer):
    other = save_tiny_model(tmp_path / "other", tokenizer, seed=1)
    soup = tmp_path / "soup"
    result = _run("soup", str(tiny_model_dir), str(other), "--out", str(soup), "-w", "0.25", "-w", "0.75")
    assert result.returncode == 0, result.stderr
    a, b, averaged = _tensors(tiny_model_dir), _tensors(other), _tensors(soup)
    assert averaged.keys() == a.keys() and not torch.equal(
        a["model.embed_tokens.weight"], b["model.embed_tokens.weight"]
    )
    for name, tensor in averaged.items():
        assert torch.allclose(tensor, 0.25 * a[name] + 0.75 * b[name], atol=1e-6), name
    record = json.loads((soup / "soup.json").read_text())
    assert record["method"] == "linear"
    assert [(i["path"], i["weight"]) for i in record["ingredients"]] == [
        (str(tiny_model_dir.resolve()), 0.25),
        (str(other.resolve()), 0.75),
    ]


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
