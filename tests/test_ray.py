"""A study's grid on a real two-node Ray cluster started on this machine: the same samples as the local executor,
one retry of a job whose process was killed (resumed from its checkpoint), the storage probe, and `--executor local`
never importing ray.

The cluster: two `ray start --block` processes this module owns, on free loopback ports given explicitly (every
port Ray opens), a short temporary directory (Unix socket paths are limited to about 107 bytes), a 100 MB object
store, no dashboard, autoscaler monitor or log monitor (Python processes the tests do not need: CPU), 1 CPU each.
Teardown stops only those processes and what they started (never `ray stop`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

SALSA = [sys.executable, "-m", "salsa.cli"]
PORTS = ("port", "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
         "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")  # fmt: skip


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _node_command(ports: list[int], temp_dir: str, head_port: int | None) -> list[str]:
    """`ray start` of one node: ports[:len(PORTS)] for its services, the next for the client server, the rest for
    its workers."""
    named = dict(zip(PORTS, ports, strict=False))
    command = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
               "--num-cpus=1", "--object-store-memory=100000000", f"--temp-dir={temp_dir}", "--disable-usage-stats",
               f"--worker-port-list={','.join(map(str, ports[len(PORTS) + 1:]))}",
               "--include-log-monitor=false"]  # fmt: skip
    if head_port is None:
        # No autoscaler monitor (a hidden flag of `ray start`): nothing to scale, and it is one more Python process
        # polling the GCS. The log monitor above: salsa's driver does not read the workers' logs (log_to_driver).
        command += ["--head", "--include-dashboard=false", "--no-monitor",
                    f"--ray-client-server-port={ports[len(PORTS)]}"]  # fmt: skip
        command += [f"--{name}={port}" for name, port in named.items()]
    else:
        command += [f"--address=127.0.0.1:{head_port}"]
        command += [f"--{name}={port}" for name, port in named.items() if name != "port"]
    return command


def _kill_leftovers(temp_dir: str) -> None:
    """Every process whose command line names the cluster's temporary directory (Ray's own, started by ours)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if temp_dir.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.fixture(scope="module")
def cluster():
    """HOST:PORT of a two-node Ray cluster (1 CPU each) on loopback."""
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")
    # No worker prestarted for the first driver (_wait_for_nodes'), which runs no task: salsa's jobs run in workers of
    # their own runtime environment anyway.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_prestart_worker_first_driver": "0"}
    ports = _free_ports(2 * (len(PORTS) + 11))
    head_ports, worker_ports = ports[: len(ports) // 2], ports[len(ports) // 2 :]
    nodes = [subprocess.Popen(_node_command(head_ports, temp_dir, None), env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    address = f"127.0.0.1:{head_ports[0]}"
    try:
        _wait_for_port(head_ports[0], nodes[0])  # the worker node joins through the head's GCS
        nodes.append(subprocess.Popen(_node_command(worker_ports, temp_dir, head_ports[0]), env=env,
                                      start_new_session=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))  # fmt: skip
        _wait_for_nodes(address, 2)
        yield address
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        _kill_leftovers(temp_dir)


def _wait_for_port(port: int, node: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and node.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not open port {port} in {timeout} s (exit code {node.poll()})")


def _wait_for_nodes(address: str, count: int, timeout: float = 90) -> None:
    """One driver process polls until `count` nodes are alive (a process per check imported ray each time: CPU the
    starting nodes need). Its printed count decides, not its exit status: a Ray driver may crash as it exits."""
    script = (
        "import ray, sys, time; ray.init(address=sys.argv[1], log_to_driver=False)\n"
        "alive, deadline = lambda: sum(n['Alive'] for n in ray.nodes()), time.monotonic() + float(sys.argv[3])\n"
        "while alive() < int(sys.argv[2]) and time.monotonic() < deadline:\n"
        "    time.sleep(0.2)\n"
        "print(alive(), flush=True)"
    )
    done = subprocess.run([sys.executable, "-c", script, address, str(count), str(timeout)], capture_output=True,
                          text=True)  # fmt: skip
    if int((done.stdout.strip().splitlines() or ["0"])[-1]) < count:
        raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes in {timeout} s: {done.stderr}")


def _start(config: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`salsa run` in a subprocess at one thread (the Ray jobs' thread count), so both executors compute alike."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([*SALSA, "run", str(config), "--quiet", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


# What `salsa run` computes in its own process before the grid, whichever the executor runs the jobs.
BASE_STAGES = ("data", "reward", "sft", "soup")


@pytest.fixture(scope="module")
def grids(request, tmp_path_factory, tiny_model_dir, tiny_study):
    """A tiny grid of 2 RL jobs (and the base job), run by the local executor and, with every job's first attempt
    killed once its checkpoint of step 1 is on disk, by the Ray executor. One seed: three jobs on two 1-CPU nodes
    already run side by side and queue for a free node; each further RL job would cost the Ray run two more processes
    (its killed attempt and its retry) that import torch and transformers. Both in the same run directory, one after
    the other (one thread each, so the same numbers on a busy machine; the cluster starts while the local run
    works): the local run starts from conftest.tiny_study's data (the same data: section), then, finished, moves to
    local/ and its base stages come back, so that the Ray run reuses them and runs every job and the evaluation."""
    root = tmp_path_factory.mktemp("grid")
    run = root / "run"
    config = {
        "run": {"output_dir": str(run), "seeds": 1, "cpus_per_job": 1},
        "data": {"model": str(tiny_model_dir), "samples_per_prompt": 2, "max_new_tokens": 6},
        "reward": {"backbone": "causal", "model": str(tiny_model_dir), "num_epochs": 0.2, "max_length": 64},
        "sft": {"model": str(tiny_model_dir), "max_steps": 2, "batch_size": 4, "max_length": 64},
        "rl": {"steps": 2, "prompts_per_step": 4, "max_new_tokens": 6, "learning_rate": 1e-3, "save_steps": 1},
        "eval": {"max_new_tokens": 6, "landscape_alphas": [0.0, 1.0], "bootstrap_samples": 200},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    _copy_stages(tiny_study / "run", run, ("data",))
    local = _start(root / "run.yaml")
    try:
        address = request.getfixturevalue("cluster")
    except BaseException:
        local.kill()
        local.wait()
        raise
    stderr = local.communicate()[1]
    assert local.returncode == 0, stderr[-3000:]
    assert _stages(run)["data"] == _stages(tiny_study / "run")["data"], "the local run sampled its data again"
    run.rename(root / "local")
    _copy_stages(root / "local", run, BASE_STAGES)
    ray = _start(root / "run.yaml", "--executor", "ray", "--ray-address", address,
                 env={"SALSA_FAULT_KILL_AT_STEP": "1"})  # fmt: skip
    stderr = ray.communicate()[1]
    assert ray.returncode == 0, stderr[-3000:]
    return {"local": root / "local", "ray": run}


def _stages(run: Path) -> dict:
    """The finished stages pipeline.json records: fingerprints and seconds."""
    return json.loads((run / "pipeline.json").read_text())["stages"]


def _copy_stages(finished: Path, run: Path, stages: tuple[str, ...]) -> None:
    """Stages of a finished run into a new run directory, as a run stopped after them leaves them: their folders,
    the run directory's own record and their fingerprints in pipeline.json."""
    run.mkdir()
    for stage in stages:
        shutil.copytree(finished / stage, run / stage)
    shutil.copy2(finished / "salsa_stage.json", run / "salsa_stage.json")
    recorded = _stages(finished)
    (run / "pipeline.json").write_text(json.dumps({"stages": {name: recorded[name] for name in stages}}))


def test_the_ray_executor_gives_the_local_executors_samples_and_summary(grids):
    local, ray = grids["local"], grids["ray"]
    # The Ray run reused the local run's base stages (redone, they would record their own seconds).
    assert [_stages(ray)[name] for name in BASE_STAGES] == [_stages(local)[name] for name in BASE_STAGES]
    # Byte-identical: the same machine and thread count, the same seeds, the same run directory.
    assert (ray / "eval" / "samples.jsonl").read_bytes() == (local / "eval" / "samples.jsonl").read_bytes()
    summary = [json.loads((run / "eval" / "results.json").read_text()) for run in (local, ray)]
    assert summary[0] == summary[1]
    jobs = sorted(p.parent.relative_to(ray / "jobs").as_posix() for p in (ray / "jobs").rglob("committed.json"))
    assert jobs == ["base", "ppo/seed-0", "salsa/seed-0"]


def test_a_killed_job_is_retried_once_from_its_checkpoint(grids):
    from salsa.grid import attempts

    ray = grids["ray"]
    for job in ("ppo/seed-0", "salsa/seed-0"):
        tries = attempts(ray, job)
        assert [t["start_step"] for t in tries] == [0, 1], job  # the second resumed from the checkpoint of step 1
        assert json.loads((ray / "jobs" / job / "committed.json").read_text())["attempt"] == 2
    assert [t["start_step"] for t in attempts(ray, "base")] == [0]  # no RL, no checkpoint: no fault


def test_a_run_directory_no_node_sees_is_refused_before_the_grid_starts(grids, cluster, monkeypatch):
    from salsa.errors import SalsaError
    from salsa.executors import RayExecutor

    monkeypatch.setattr("salsa.executors._read_probe", lambda path: None)  # as if the nodes mounted nothing there
    executor = RayExecutor(cluster, 1)
    with pytest.raises(SalsaError, match=f"{grids['ray']} is not visible from Ray node"):
        executor.run(grids["ray"], [], show_progress=False)


def test_the_local_executor_never_imports_ray_and_a_missing_extra_is_one_line(tmp_path):
    check = (
        "import sys; from pathlib import Path; import salsa.pipeline; from salsa.executors import make_executor;"
        f"make_executor('local', None, 1).run(Path('{tmp_path}'), [], False); print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]
    hidden = (
        "import sys; sys.modules['ray'] = None\nfrom salsa.cli import main\ntry: main()\n"
        "finally: print('transformers' in sys.modules)"  # the error comes before transformers loads
    )
    done = subprocess.run([sys.executable, "-c", hidden, "run", "--executor", "ray", "--set",
                           f"run.output_dir={tmp_path / 'r'}"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and done.stdout.strip().splitlines()[-1] == "False", done.stdout
    assert done.stderr.strip() == "error: --executor ray needs Ray: pip install 'salsa-rlhf[ray]'"
    assert not (tmp_path / "r").exists()
