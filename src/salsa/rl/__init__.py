"""The RL stage (`salsa rl`): PPO, RLOO and GRPO online (`ppo.py`), DPO offline (`dpo.py`), with the KL reference,
learner, rollouts, reward normalisation and the RL math (`core.py`) they share."""
