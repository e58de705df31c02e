"""Soup wall time and peak memory: salsa's streaming soup against a naive load-everything average
and mergekit's linear merge, side by side in one run; for K = 2 also SLERP (t = 0.5) by the same three.

Models: the default SmolLM2-135M-Instruct (fp32, 0.54 GB) and a synthetic Llama-shaped model generated
on the fly (bf16, ~1.9 GB: hidden 2048, 16 layers, vocab 32000, untied head). For K = 2, 4, 8 distinct
ingredients, each method runs in a fresh child process that reports its wall time and its peak RSS above
the RSS it had after imports (VmHWM, reset after the imports). "read" is the time to simply read every
ingredient file once (median of three); "read+write" also writes one output-sized file, the I/O any soup
must do. salsa computes the SHA-256 of every ingredient for soup.json; "salsa-cached" is a second soup of
the same ingredients, which finds the digests cached, as does every soup of models salsa trained (SFT and
RL record the digests of what they save). "salsa-slerp" runs after them and finds the digests cached too: it
reads the two ingredients twice (a pass for each tensor's dot product and norms, then the merge).

By default the ingredients sit in the page cache (they were just written), so "read" is a memory copy.
With --cold every ingredient file is dropped from the page cache (posix_fadvise DONTNEED) before each
read and each merge, as when a soup reads checkpoints larger than RAM from disk.

    .venv/bin/python benchmarks/soup.py [--ks 2 4 8] [--workdir DIR] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

LARGE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)  # fmt: skip


def make_ingredients(kind: str, k: int, workdir: Path) -> list[Path]:
    """K distinct ingredient directories: perturbed copies of the default model, or random large models."""
    import torch
    from transformers import LlamaConfig

    from salsa.models import resolve_model
    from salsa.weights.reader import tensor_index
    from salsa.weights.stream import read_tensor, write_streaming

    dirs = []
    for i in range(k):
        out = workdir / kind / f"ingredient-{i}"
        dirs.append(out)
        if (out / "model.safetensors").is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(i)
        if kind == "default":
            source = Path(resolve_model("smollm2-135m"))
            index = tensor_index(source)
            layout = [(n, e.torch_dtype, e.shape) for n, e in index.items()]

            def produce(name, index=index, generator=generator):
                t = read_tensor(index[name])
                return [t + 1e-3 * torch.randn(t.shape, generator=generator, dtype=t.dtype)]

            for f in source.iterdir():
                if f.suffix != ".safetensors" and f.is_file():
                    shutil.copy(f, out / f.name)
        else:
            config = LlamaConfig(**LARGE)
            h, m, v = config.hidden_size, config.intermediate_size, config.vocab_size
            layout = [("model.embed_tokens.weight", torch.bfloat16, (v, h))]
            for layer in range(config.num_hidden_layers):
                p = f"model.layers.{layer}."
                layout += [(p + f"self_attn.{x}_proj.weight", torch.bfloat16, (h, h)) for x in "qkvo"]
                layout += [
                    (p + "mlp.gate_proj.weight", torch.bfloat16, (m, h)),
                    (p + "mlp.up_proj.weight", torch.bfloat16, (m, h)),
                ]
                layout += [(p + "mlp.down_proj.weight", torch.bfloat16, (h, m))]
                layout += [
                    (p + "input_layernorm.weight", torch.bfloat16, (h,)),
                    (p + "post_attention_layernorm.weight", torch.bfloat16, (h,)),
                ]
            layout += [("model.norm.weight", torch.bfloat16, (h,)), ("lm_head.weight", torch.bfloat16, (v, h))]
            shapes = {name: shape for name, _, shape in layout}

            def produce(name, shapes=shapes, generator=generator):
                return [(0.02 * torch.randn(shapes[name], generator=generator)).to(torch.bfloat16)]

            config.dtype = "bfloat16"
            config.save_pretrained(out)
        write_streaming(out / "model.safetensors", layout, produce)
    return dirs


def drop_from_page_cache(dirs: list[Path]) -> None:
    for d in dirs:
        for file in d.glob("*.safetensors"):
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_all(dirs: list[Path], write_to: Path | None = None) -> float:
    """Seconds to read every ingredient file once; with `write_to`, also to write one output-sized file there
    (the I/O any soup must do, whatever its arithmetic)."""
    buffer = bytearray(4 << 20)  # fits the CPU cache: reads from the page cache run ~5x faster than with 64 MB
    started = time.perf_counter()
    for d in dirs:
        with open(d / "model.safetensors", "rb") as f:
            while f.readinto(buffer):
                pass
    if write_to is not None:
        remaining = (dirs[0] / "model.safetensors").stat().st_size
        with open(write_to, "wb") as f:
            while remaining > 0:
                remaining -= f.write(memoryview(buffer)[: min(remaining, len(buffer))])
    seconds = time.perf_counter() - started
    if write_to is not None:
        write_to.unlink()
    return seconds


def peak_rss() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over from the parent at fork."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def child(method: str, out: Path, dirs: list[Path]) -> None:
    """Runs in a fresh process: one merge, then its time and peak RSS above the post-import RSS."""
    import torch
    from safetensors.torch import load_file, save_file

    from salsa.soup import build_soup
    from salsa.weights.average import slerp

    if method.startswith("mergekit"):
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    reset_peak_rss()
    baseline = psutil.Process().memory_info().rss
    started = time.perf_counter()
    weights = [1.0 / len(dirs)] * len(dirs)
    dtype = "float32" if "default" in str(dirs[0]) else "bfloat16"
    if method in ("salsa", "salsa-cached"):  # the second run finds the first run's SHA-256 digests cached
        build_soup(dirs, out)
    elif method == "salsa-slerp":
        build_soup(dirs, out, method="slerp", t=0.5)
    elif method in ("naive", "naive-slerp"):
        states = [load_file(str(d / "model.safetensors")) for d in dirs]
        if method == "naive":
            merged = {
                n: sum(w * s[n].float() for w, s in zip(weights, states, strict=True)).to(states[0][n].dtype)
                for n in states[0]
            }
        else:
            merged = {n: slerp(states[0][n], states[1][n], 0.5).to(states[0][n].dtype) for n in states[0]}
        out.mkdir(parents=True)
        save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        if method == "mergekit":
            models = [{"model": str(d), "parameters": {"weight": w}} for d, w in zip(dirs, weights, strict=True)]
            merge = {"merge_method": "linear", "models": models, "parameters": {"normalize": False}}
        else:
            models = [{"model": str(d)} for d in dirs]
            merge = {"merge_method": "slerp", "base_model": str(dirs[0]), "models": models, "parameters": {"t": 0.5}}
        config = MergeConfiguration.model_validate({**merge, "dtype": dtype})
        run_merge(config, str(out), MergeOptions(lazy_unpickle=True, low_cpu_memory=False, quiet=True))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_above_baseline": peak_rss() - baseline}))
    del torch


def measure(method: str, dirs: list[Path], out: Path, cache: Path, cold: bool) -> dict | None:
    """One merge in a fresh process; `cache` is its SALSA_CACHE (salsa's digest cache lives there)."""
    shutil.rmtree(out, ignore_errors=True)
    if cold:
        drop_from_page_cache(dirs)
    cmd = [sys.executable, __file__, "--child", method, "--out", str(out), *map(str, dirs)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SALSA_CACHE": str(cache)})
    shutil.rmtree(out, ignore_errors=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        print(f"  {method} failed: {reason}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--kinds", nargs="+", default=["default", "large"])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cold", action="store_true", help="read every ingredient from disk, not the page cache")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("dirs", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.out, args.dirs)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="salsa-soup-bench-"))
    total_ram = psutil.virtual_memory().total
    gb = 1e9
    print(f"{'model':8}{'K':>3}{'size GB':>9}{'method':>15}{'seconds':>9}{'x read':>8}{'peak GB':>9}{'x shard':>9}")
    for kind in args.kinds:
        for k in args.ks:
            dirs = make_ingredients(kind, k, workdir)
            os.sync()  # freshly written ingredients must not be flushed to disk while a merge is timed
            size = (dirs[0] / "model.safetensors").stat().st_size
            shard = min(size, 2e9)  # salsa's default max_shard_size is 2GB
            timings = []
            for _ in range(3):  # reads from the page cache vary 2-3x between runs here: the median of three
                if args.cold:
                    drop_from_page_cache(dirs)
                timings.append(read_all(dirs))
            read_s = sorted(timings)[1]
            if args.cold:
                drop_from_page_cache(dirs)
            read_write_s = read_all(dirs, write_to=workdir / "written")
            print(f"{kind:8}{k:>3}{size / gb:>9.2f}{'read':>15}{read_s:>9.1f}")
            print(f"{'':20}{'read+write':>15}{read_write_s:>9.1f}{read_write_s / read_s:>8.2f}")
            cache = Path(tempfile.mkdtemp(prefix="salsa-cache-"))  # no digests cached from earlier rows
            slerp_methods = ("salsa-slerp", "naive-slerp", "mergekit-slerp") if k == 2 else ()
            for method in ("salsa", "salsa-cached", "naive", "mergekit", *slerp_methods):
                if method.startswith("naive") and (k + 3) * size > 0.7 * total_ram:
                    need = (k + 3) * size / gb
                    print(f"{'':20}{method:>15}  skipped: needs ~{need:.0f} GB of {total_ram / gb:.0f} GB RAM")
                    continue
                r = measure(method, dirs, workdir / "out", cache, args.cold)
                if r:
                    print(f"{'':20}{method:>15}{r['seconds']:>9.1f}{r['seconds'] / read_s:>8.2f}"
                          f"{r['peak_above_baseline'] / gb:>9.2f}{r['peak_above_baseline'] / shard:>9.2f}")  # fmt: skip
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(workdir / kind, ignore_errors=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
