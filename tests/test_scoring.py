"""Rewards from anywhere: a reward model from TRL or the hub, salsa's own read by plain transformers, a function."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from salsa.config import RewardConfig
from salsa.errors import ConfigError
from salsa.inputs import check_reward_model, is_function_spec
from salsa.reward import train_reward
from salsa.scoring import RewardModel, conversation_texts, reward_function

PROMPTS = ["Review a cafe.", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
RESPONSES = ["Lovely coffee and kind staff.", "Hello!"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tokenizer):
    """A tiny LlamaForSequenceClassification with one label, as TRL's RewardTrainer saves one."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("rm") / "classifier"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_sequence_classification_model_is_scored_as_trl_scores_it(classifier_dir, tokenizer):
    reward = RewardModel.load(str(classifier_dir), torch.device("cpu"))
    assert reward.layout == "conversation" and (reward.mean, reward.std) == (0.0, 1.0)
    # By hand, as TRL's GRPO/RLOO trainers do: the chat template over the whole conversation, the response as the
    # assistant's turn, tokenised without special tokens, padded on the right, logits[:, 0].
    texts = [
        tokenizer.apply_chat_template([*([{"role": "user", "content": p}] if isinstance(p, str) else p),
                                       {"role": "assistant", "content": r}], tokenize=False)
        for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]  # fmt: skip
    assert conversation_texts(reward.tokenizer, PROMPTS, RESPONSES) == texts
    assert texts[0].endswith("<|im_end|>\n") and "Be brief." in texts[1]  # end of turn read; every turn kept
    inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    with torch.no_grad():
        expected = model(**inputs).logits[:, 0]
    assert torch.allclose(reward.score(PROMPTS, RESPONSES), expected, atol=1e-5)
    trl = pytest.importorskip("trl.data_utils")  # and TRL's own templating, where TRL is installed
    for prompt, response, text in zip(PROMPTS, RESPONSES, texts, strict=True):
        messages = [*([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt),
                    {"role": "assistant", "content": response}]  # fmt: skip
        assert trl.apply_chat_template({"messages": messages}, tokenizer)["text"] == text


def test_salsas_reward_model_loads_whole_in_transformers_with_the_same_scores(tmp_path):
    pairs = [
        {"prompt": f"Review {i}.", "chosen": "Great, I loved it.", "rejected": "Awful, I hated it."} for i in range(16)
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = RewardConfig(data=str(tmp_path / "pairs.jsonl"), eval_data=None, output_dir=str(tmp_path / "rm"),
                          num_epochs=1, batch_size=8, max_length=32)  # fmt: skip
    path = train_reward(config, show_progress=False)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, trust_remote_code=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the head included, nothing initialised at random
    reward = RewardModel.load(str(path), torch.device("cpu"))
    inputs = reward.encode(["Review 3.", "Review 3."], ["Great, I loved it.", "Awful, I hated it."])
    with torch.no_grad():
        plain = model.eval()(**inputs).logits[:, 0]
    expected = reward.raw_scores(["Review 3."] * 2, ["Great, I loved it.", "Awful, I hated it."])
    assert torch.allclose(plain, expected, atol=1e-5)  # two loaded copies: equal to float rounding
    # Without trust_remote_code transformers refuses it, instead of loading a BERT classifier with a random head.
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(path)


def test_checking_a_reward_input_imports_neither_torch_nor_transformers(tmp_path, classifier_dir):
    """Bad input is answered before any heavy import (0.17 s, not 3.5 s, for `salsa rl` with a bad prompts row),
    and a reward file, imported by that check and again by the stage, runs once."""
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("import pathlib\npathlib.Path(__file__).with_suffix('.log').open('a').write('ran\\n')\n"
                           "def score(prompts, responses):\n    return [0.0] * len(responses)\n")  # fmt: skip
    check = (
        "import sys; from salsa.inputs import check_reward_model, import_function; "
        f"check_reward_model({str(classifier_dir)!r}, 'rl.reward_model'); "
        f"check_reward_model({str(reward_file)!r} + ':score', 'rl.reward_model'); "
        "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy; "
        f"import os; os.chdir({str(tmp_path)!r}); import_function('my_reward.py:score')"
    )
    subprocess.run([sys.executable, "-c", check], check=True)
    assert reward_file.with_suffix(".log").read_text() == "ran\n"


def test_a_reward_function_is_named_by_module_or_file():
    assert is_function_spec("tests/rewards.py:length") and is_function_spec("my_rewards.scoring:length")
    assert not is_function_spec("runs/reward/model") and not is_function_spec("HuggingFaceH4/reward-model")
    scores = reward_function(str(Path(__file__).parent / "rewards.py") + ":length")(PROMPTS, RESPONSES)
    assert scores.tolist() == pytest.approx([len(r) / 10.0 for r in RESPONSES])
    with pytest.raises(ConfigError, match=r"returned 1 scores for 2 responses"):
        reward_function(str(Path(__file__).parent / "rewards.py") + ":first_only")(PROMPTS, RESPONSES)


def test_a_hub_reward_model_may_have_dots_in_its_name():
    # The README's `--reward-model Skywork/Skywork-Reward-V2-Qwen3-0.6B` was taken for a missing directory.
    hub_id = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
    check_reward_model(hub_id, "rl.reward_model", download=True)  # a dry run: the name's form only
    with pytest.raises(ConfigError, match=r"is not a local directory and not in the Hugging Face cache"):
        check_reward_model(hub_id, "rl.reward_model")  # offline: not downloaded, as a hub model
    for path in ("rewards.py", "./nope", "runs/reward/model"):  # a bare name with a dot, or a path, is local
        with pytest.raises(ConfigError, match=f"reward model directory {path} does not exist"):
            check_reward_model(path, "rl.reward_model", download=True)


@pytest.mark.parametrize("reward", ["classifier", "file:function", "module:function"])
def test_salsa_rl_takes_a_classifier_or_a_function_from_the_command_line(
    reward, classifier_dir, tiny_model_dir, tmp_path
):
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in ["Hi.", "Review a cafe."])
    )
    specs = {"classifier": str(classifier_dir), "file:function": str(Path(__file__).parent / "rewards.py") + ":length",
             "module:function": "rewards:length"}  # fmt: skip
    spec = specs[reward]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "salsa.cli", "rl", "--init", str(tiny_model_dir), "--reward-model", spec, "-q",
         "--output-dir", str(tmp_path / "rl"), "--steps", "2", "--set", f"prompts={tmp_path / 'prompts.jsonl'}",
         "--set", "prompts_per_step=2", "--set", "max_new_tokens=4", "--set", "task=null",
         "--set", "reward_normalisation=initial_policy"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and "reward normalised by mean" in result.stderr
