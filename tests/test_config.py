import pytest

from salsa.config import DPOConfig, RLConfig, SFTConfig
from salsa.config_loading import load_stage_config, save_config, validate_values
from salsa.errors import ConfigError


def test_yaml_then_overrides_then_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  learning_rate: 1.0e-4\n  num_models: 3\n")
    cfg = load_stage_config(SFTConfig, "sft", path, ["sft.learning_rate=2e-5", "use_lora=true", "seeds=[3, 5]"])
    assert cfg.learning_rate == 2e-5
    assert cfg.num_models == 3
    assert cfg.use_lora is True
    assert cfg.seeds == [3, 5]


def test_stage_level_yaml_and_null(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: null\nnum_epochs: 2\n")
    cfg = load_stage_config(SFTConfig, "sft", path)
    assert cfg.max_steps is None and cfg.num_epochs == 2.0


def test_unknown_key_in_yaml_names_file_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  learning_rte: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"c.yaml \[sft\]: unknown key 'learning_rte'; did you mean 'learning_rate'"):
        load_stage_config(SFTConfig, "sft", path)


def test_unknown_section_and_override_key():
    with pytest.raises(ConfigError, match="unknown section 'sfft'; did you mean 'sft'"):
        load_stage_config(SFTConfig, "sft", None, ["sfft.seed=1"])
    with pytest.raises(ConfigError, match="unknown key 'batchsize'; did you mean 'batch_size'"):
        load_stage_config(SFTConfig, "sft", None, ["batchsize=4"])


def test_bad_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="--set 'batch_size=4.5': expected an integer, got '4.5'"):
        load_stage_config(SFTConfig, "sft", None, ["batch_size=4.5"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_stage_config(SFTConfig, "sft", None, ["batch_size"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_stage_config(SFTConfig, "sft", tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = SFTConfig(learning_rate=1e-4, seeds=[1, 2], use_lora=True)
    save_config(cfg, tmp_path / "config.yaml", section="sft")
    assert load_stage_config(SFTConfig, "sft", tmp_path / "config.yaml") == cfg


def test_dpo_reads_its_own_section_and_an_rl_section_with_dpo_points_to_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("rl:\n  steps: 3\ndpo:\n  beta: 0.2\n  batch_size: 4\n  reference: ema\n")
    assert load_stage_config(DPOConfig, "dpo", path) == DPOConfig(beta=0.2, batch_size=4, reference="ema")
    assert load_stage_config(RLConfig, "rl", path) == RLConfig(steps=3)
    old = tmp_path / "old.yaml"  # DPO's settings as they were, in the rl section
    old.write_text("rl:\n  algorithm: dpo\n  dpo_beta: 0.2\n")
    with pytest.raises(ConfigError, match=r"old.yaml \[rl\]: unknown key 'dpo_beta'; it is dpo.beta now, in the "):
        load_stage_config(RLConfig, "rl", old)
    old.write_text("rl:\n  algorithm: dpo\n")
    with pytest.raises(ConfigError, match=r"rl.algorithm must be one of ppo, rloo, grpo \(DPO is its own command now"):
        validate_values(load_stage_config(RLConfig, "rl", old))


def test_a_recorded_rl_config_from_before_dpo_moved_out_still_reads(tmp_path):
    # An RL run's config.yaml written before DPO had its own config (every archived study's runs) holds DPO's keys
    # at their defaults: read as a record they are left out; typed by a user they are still refused.
    old = tmp_path / "config.yaml"
    old.write_text(
        "rl:\n  algorithm: ppo\n  kl_coef: 0.05\n  dpo_beta: 0.1\n  dpo_batch_size: 8\n  preference_data: null\n"
    )
    recorded = load_stage_config(RLConfig, "rl", old, recorded=True)
    assert recorded.kl_coef == 0.05 and recorded.algorithm == "ppo"
    with pytest.raises(ConfigError, match="unknown key 'dpo_beta'; it is dpo.beta now"):
        load_stage_config(RLConfig, "rl", old)
