"""Atomic writes leave files with the permissions a plain write would give them."""

import os
import stat

import torch
from safetensors.torch import save_file

from salsa.io import atomic_dir, atomic_write_text


def test_atomic_writes_follow_the_umask_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "model") as tmp:
            save_file({"w": torch.zeros(1)}, str(tmp / "model.safetensors"))  # safetensors writes 0600
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.txt") == 0o644
    assert mode(tmp_path / "model") == 0o755
    assert mode(tmp_path / "model" / "model.safetensors") == 0o644
