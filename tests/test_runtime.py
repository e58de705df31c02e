"""Device, precision and processes come from one helper (salsa.runtime); every stage asks it."""

import re
from pathlib import Path

import torch

import salsa.runtime as runtime


def test_the_device_is_the_gpu_when_one_is_present_and_a_cpu_run_forms_its_process_group(monkeypatch):
    asked = []

    class Recorder:
        def __init__(self, cpu):
            asked.append(cpu)

    monkeypatch.setattr(runtime, "PartialState", Recorder)
    monkeypatch.setattr(runtime, "Accelerator", Recorder)
    for cuda in (True, False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        runtime.process_state()
        runtime.accelerator.__wrapped__()
    # cpu=False with a GPU (the process's GPU is used); cpu=True without one (gloo joins the processes)
    assert asked == [False, False, True, True]


def test_auto_precision_is_bf16_on_a_gpu_that_has_it_and_full_precision_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert runtime.compute_dtype("auto") is torch.bfloat16 and runtime.compute_dtype("no") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert runtime.compute_dtype("auto") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.compute_dtype("auto") is None and runtime.compute_dtype("bf16") is torch.bfloat16


def test_no_stage_chooses_its_own_device():
    # Stages place models on runtime.accelerator().device; a literal CPU device in a stage module would pin a
    # model to the CPU on a GPU machine. (Copies to the CPU for saving use .cpu(), which is fine.)
    source = Path(runtime.__file__).parent
    offenders = [
        f"{path.relative_to(source)}:{number}"
        for path in source.rglob("*.py")
        if path.name != "runtime.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r"""(device\s*=\s*|\.to\()\s*["']cpu["']|torch\.device\(["']cpu""", line)
    ]
    assert not offenders, offenders


def test_batches_are_dealt_out_whole_and_in_turn(monkeypatch):
    class State:
        process_index, num_processes = 1, 3

    monkeypatch.setattr(runtime, "process_state", lambda: State)
    assert runtime.my_batches(list(range(10)), 2) == [[2, 3], [8, 9]]
    assert runtime.my_share(7) == [1, 4]
