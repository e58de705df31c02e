import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from salsa import train_sft
from salsa.errors import ConfigError, SalsaError
from salsa.sft import token_cross_entropy_sum


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cross_entropy_sum_matches_hand_computation():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    labels = torch.tensor([[-100, 1, -100]])  # only position 0 predicts a target (token 1)
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), dim=0)[1]
    assert torch.allclose(token_cross_entropy_sum(logits, labels), expected)


def test_only_the_positions_that_predict_a_target_go_through_the_output_layer(tiny_model_dir):
    """Completion-only loss: the prompts' positions predict no target, so the output layer skips them; the loss and
    its gradients are those of every position's logits (rows right-padded, targets starting at different columns)."""
    from salsa.sft import _accumulate, count_targets, predicting_positions

    labels = torch.tensor([[-100, -100, -100, 5, 6, -100, -100], [-100, -100, 7, 8, 9, 10, -100]])
    assert predicting_positions(labels) == 6  # position 1 predicts row 1's first target (column 2)
    assert predicting_positions(torch.full((2, 4), -100)) == 4  # no target: every position, as before
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, labels.shape, generator=torch.Generator().manual_seed(0))
    labels = torch.where(labels == -100, labels, ids)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    grads = []
    full = token_cross_entropy_sum(model(input_ids=ids, attention_mask=mask).logits, labels)  # every position
    (full / count_targets(labels)).backward()
    grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad()
    through = []  # the positions the output layer sees: 6 of 7, the first predicts no target in either row
    model.lm_head.register_forward_hook(lambda module, args, out: through.append(args[0].shape[1]))
    totals = _accumulate(model, [{"input_ids": ids, "labels": labels, "attention_mask": mask}], None)
    assert through == [6]
    grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(totals[1].float(), full.detach())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_same_seed_same_weights_different_seeds_differ(tiny_sft_config, tmp_path):
    config = dataclasses.replace(tiny_sft_config, max_steps=2)  # two steps already differ in their data and order
    a = train_sft(dataclasses.replace(config, output_dir=str(tmp_path / "a")), seeds=[0, 1])
    b = train_sft(dataclasses.replace(config, output_dir=str(tmp_path / "b")), seeds=[0])
    assert _same(_weights(a[0]), _weights(b[0]))
    assert not _same(_weights(a[0]), _weights(a[1]))


def test_activation_checkpointing_trains_the_same_weights(tiny_sft_config, tmp_path):
    """Recomputing activations changes memory, not the math (and calls no deprecated transformers API: the
    suite turns FutureWarnings into errors)."""
    plain = train_sft(dataclasses.replace(tiny_sft_config, output_dir=str(tmp_path / "plain")))
    recomputed = train_sft(
        dataclasses.replace(tiny_sft_config, output_dir=str(tmp_path / "ckpt"), gradient_checkpointing=True)
    )
    a, b = _weights(plain[0]), _weights(recomputed[0])
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_loss_decreases_and_outputs_are_standard(tiny_sft_config):
    cfg = dataclasses.replace(tiny_sft_config, max_steps=25)
    (path,) = train_sft(cfg)
    losses = [json.loads(line)["loss"] for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    model = AutoModelForCausalLM.from_pretrained(path)
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    assert (path / "tensorboard").is_dir()
    assert (path.parent / "config.yaml").is_file()
    assert not (path / "checkpoints").exists()


def test_lora_saves_merged_model_equal_to_base_plus_adapter(tiny_sft_config, tiny_model_dir):
    from peft import PeftModel

    cfg = dataclasses.replace(tiny_sft_config, use_lora=True, learning_rate=1e-2, lora_dropout=0.0)
    (path,) = train_sft(cfg)
    assert (path / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(path).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with_adapter = PeftModel.from_pretrained(base, path / "adapter").eval()
    ids = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-5)
    assert not _same(_weights(path), load_file(str(tiny_model_dir / "model.safetensors")))


def test_interrupted_run_resumes_to_identical_weights(tiny_sft_config, tmp_path, interrupt):
    cfg = dataclasses.replace(tiny_sft_config, max_steps=5, save_steps=2, grad_accum_steps=2)
    (reference,) = train_sft(dataclasses.replace(cfg, output_dir=str(tmp_path / "straight")))

    interrupted = dataclasses.replace(cfg, output_dir=str(tmp_path / "resumed"))
    # The first micro-batch of step 4 dies: the newest checkpoint is step 2, and step 3 is done again.
    restore = interrupt("salsa.sft.token_cross_entropy_sum", at_call=2 * 3 + 1)
    with pytest.raises(KeyboardInterrupt):
        train_sft(interrupted)
    out = tmp_path / "resumed" / "sft-0"
    assert (out / "checkpoints" / "step-0000002").is_dir()
    assert not (out / "model.safetensors").exists()
    restore()
    (resumed,) = train_sft(interrupted)
    assert _same(_weights(resumed), _weights(reference))
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 6))


def test_complete_models_are_reused_and_config_changes_refused(tiny_sft_config):
    (path,) = train_sft(tiny_sft_config)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    train_sft(tiny_sft_config)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(SalsaError, match=r"another config \(learning_rate: 0.003 -> 0.0001\).*--overwrite"):
        train_sft(dataclasses.replace(tiny_sft_config, learning_rate=1e-4))
    train_sft(dataclasses.replace(tiny_sft_config, learning_rate=1e-4), overwrite=True)
    assert (path / "model.safetensors").stat().st_mtime_ns != stamp


def test_invalid_training_values_are_config_errors(tiny_sft_config):
    with pytest.raises(ConfigError, match="sft.batch_size must be >= 1, got 0"):
        train_sft(dataclasses.replace(tiny_sft_config, batch_size=0))
    with pytest.raises(ConfigError, match="sft.lr_scheduler must be one of"):
        train_sft(dataclasses.replace(tiny_sft_config, lr_scheduler="step"))


def test_data_shards_give_each_model_its_own_data(tiny_sft_config):
    from salsa.sft import member_data

    examples = list(range(10))
    config = dataclasses.replace(tiny_sft_config, num_models=3, data_shards="disjoint")
    shards = [member_data(config, examples, i) for i in range(3)]
    assert [name for _, name in shards] == ["shard 1 of 3", "shard 2 of 3", "shard 3 of 3"]
    assert sorted(x for own, _ in shards for x in own) == examples  # disjoint, and together all of the data
    assert shards[0][0] != [0, 3, 6, 9]  # a seeded permutation, not a stride over the file order
    boot = dataclasses.replace(config, data_shards="bootstrap")
    (first, _), (second, name) = member_data(boot, examples, 0), member_data(boot, examples, 1)
    assert len(first) == 10 and len(set(first)) < 10 and first != second and name == "bootstrap resample 1"
    assert member_data(tiny_sft_config, examples, 0) == (examples, "all")


def test_a_model_trained_on_other_data_is_refused_not_reused(tiny_sft_config):
    paths = train_sft(dataclasses.replace(tiny_sft_config, num_models=2, max_steps=1, data_shards="disjoint"))
    assert json.loads((paths[1] / "salsa_complete.json").read_text())["data"] == "shard 2 of 2"
    # Three models: shard 2 of 2 is not shard 2 of 3, so sft-1 is not silently reused (nor replaced).
    three = dataclasses.replace(tiny_sft_config, num_models=3, max_steps=1, data_shards="disjoint")
    with pytest.raises(SalsaError, match="trained on shard 1 of 2, and this config asks seed 0 on shard 1 of 3"):
        train_sft(three)
