import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from salsa.errors import SalsaError, SoupError
from salsa.io import digest_key, load_digest_cache, record_digests, save_digest_cache, sha256_file
from salsa.soup import build_soup
from salsa.weights.average import slerp, weighted_average
from salsa.weights.in_memory import soup_state_dict
from salsa.weights.reader import tensor_index
from salsa.weights.spec import resolve_merge, soup_weights
from salsa.weights.stream import read_header, read_tensor

CONFIG = {"model_type": "toy", "hidden_size": 4, "tie_word_embeddings": False}


def _ingredient(path, tensors, config=CONFIG, vocab=None):
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config))
    tokenizer = {"model": {"vocab": vocab or {"a": 0, "b": 1}}, "added_tokens": []}
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    return path


def _pair(tmp_path, **b_overrides):
    a = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0]), "h": torch.tensor([[8.0]], dtype=torch.bfloat16),
         "steps": torch.tensor([7], dtype=torch.int64)}  # fmt: skip
    b = {"w": torch.tensor([3.0, 6.0, 9.0, 12.0]), "h": torch.tensor([[0.0]], dtype=torch.bfloat16),
         "steps": torch.tensor([7], dtype=torch.int64)}  # fmt: skip
    b.update(b_overrides)
    return _ingredient(tmp_path / "a", a), _ingredient(tmp_path / "b", b)


def test_weights_resolution_and_checks():
    assert soup_weights(4) == [0.25] * 4
    assert soup_weights(2, alpha=0.3) == [0.7, 0.3]
    assert soup_weights(2, alpha=1.5, allow_extrapolation=True) == [-0.5, 1.5]
    for kwargs, message in [
        ({"num_models": 1}, "at least two models"),
        ({"num_models": 2, "weights": [0.5, 0.6]}, "must sum to 1"),
        ({"num_models": 2, "weights": [-0.5, 1.5]}, "must be >= 0"),
        ({"num_models": 3, "weights": [0.5, 0.5]}, "one weight per model"),
        ({"num_models": 2, "alpha": 1.5}, "outside \\[0, 1\\]; pass --allow-extrapolation"),
        ({"num_models": 3, "alpha": 0.5}, "exactly two models"),
        ({"num_models": 2, "weights": [float("nan"), 1.0]}, "finite"),
    ]:
        with pytest.raises(SoupError, match=message):
            soup_weights(**kwargs)


def test_weighted_average_matches_hand_computation():
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([5.0, 2.0])
    assert torch.equal(weighted_average([a, b], [0.25, 0.75]), torch.tensor([4.0, 1.0]))
    half = torch.tensor([1.0], dtype=torch.bfloat16)
    assert weighted_average([half, half], [0.5, 0.5]).dtype == torch.float32


def test_streamed_soup_equals_hand_computed_average(tmp_path):
    a, b = _pair(tmp_path)
    out = build_soup([a, b], tmp_path / "soup", [0.25, 0.75])
    result = load_file(str(out / "model.safetensors"))
    assert torch.equal(result["w"], torch.tensor([2.5, 5.0, 7.5, 10.0]))
    assert result["h"].dtype == torch.bfloat16 and result["h"].item() == 2.0
    assert torch.equal(result["steps"], torch.tensor([7]))  # integer buffers are copied, not averaged
    provenance = json.loads((out / "soup.json").read_text())
    assert [i["weight"] for i in provenance["ingredients"]] == [0.25, 0.75]
    import hashlib

    digest = hashlib.sha256((a / "model.safetensors").read_bytes()).hexdigest()
    assert provenance["ingredients"][0]["sha256"]["model.safetensors"] == digest
    merge = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert merge["merge_method"] == "linear"
    assert [m["parameters"]["weight"] for m in merge["models"]] == [0.25, 0.75]
    assert json.loads((out / "config.json").read_text()) == CONFIG


def test_chunked_streaming_matches_whole_tensor_average(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "salsa.weights.merge.CHUNK_ELEMENTS", 3
    )  # every tensor spans several chunks, the last one partial
    generator = torch.Generator().manual_seed(0)
    states = [
        {
            "w": torch.randn(5, 2, generator=generator),
            "h": torch.randn(7, generator=generator).to(torch.bfloat16),
            "ids": torch.arange(10),
        }  # fmt: skip
        for _ in range(3)
    ]
    dirs = [_ingredient(tmp_path / f"m{i}", state) for i, state in enumerate(states)]
    result = load_file(str(build_soup(dirs, tmp_path / "soup", [0.5, 0.3, 0.2]) / "model.safetensors"))
    expected = soup_state_dict(states, [0.5, 0.3, 0.2])
    assert result.keys() == expected.keys()
    assert all(torch.equal(result[k], expected[k]) for k in expected)


def test_digests_recorded_at_save_are_reused_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_CACHE", str(tmp_path / "cache"))
    a, b = _pair(tmp_path)
    record_digests(a)
    weights_file = a / "model.safetensors"
    assert load_digest_cache() == {digest_key(weights_file): sha256_file(weights_file)}
    # A soup trusts the recorded digest (shown here by planting a stand-in) instead of hashing again ...
    save_digest_cache({digest_key(weights_file): "recorded"})
    provenance = json.loads((build_soup([a, b], tmp_path / "s1") / "soup.json").read_text())
    assert provenance["ingredients"][0]["sha256"]["model.safetensors"] == "recorded"
    # ... and hashes the file again once it has changed.
    weights_file.write_bytes(weights_file.read_bytes())
    os.utime(weights_file, ns=(1, 1))
    provenance = json.loads((build_soup([a, b], tmp_path / "s2") / "soup.json").read_text())
    assert provenance["ingredients"][0]["sha256"]["model.safetensors"] == sha256_file(weights_file)


def test_alpha_endpoints_and_extrapolation(tmp_path):
    a, b = _pair(tmp_path)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    at0 = load_file(str(build_soup([a, b], tmp_path / "s0", alpha=0.0) / "model.safetensors"))
    at1 = load_file(str(build_soup([a, b], tmp_path / "s1", alpha=1.0) / "model.safetensors"))
    assert all(torch.equal(at0[k], wa[k]) for k in wa)
    assert all(torch.equal(at1[k], wb[k]) for k in wb)
    beyond = build_soup([a, b], tmp_path / "s2", alpha=1.5, allow_extrapolation=True)
    assert torch.equal(load_file(str(beyond / "model.safetensors"))["w"], torch.tensor([4.0, 8.0, 12.0, 16.0]))


def test_sharded_output_with_index_and_dtype(tmp_path):
    tensors = {f"layer{i}": torch.full((64,), float(i)) for i in range(6)}
    a = _ingredient(tmp_path / "a", tensors)
    b = _ingredient(tmp_path / "b", {k: v * 3 for k, v in tensors.items()})
    out = build_soup([a, b], tmp_path / "soup", max_shard_size="300B", dtype="bfloat16")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    entries = tensor_index(out)
    for i in range(6):
        value = read_tensor(entries[f"layer{i}"])
        assert value.dtype == torch.bfloat16 and torch.equal(value, torch.full((64,), 2.0 * i, dtype=torch.bfloat16))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    # A soup of the sharded soup reads shards back through the index.
    again = build_soup([out, out], tmp_path / "again")
    assert torch.equal(read_tensor(tensor_index(again)["layer5"]), torch.full((64,), 10.0, dtype=torch.bfloat16))


@pytest.mark.parametrize(
    ("make_b", "message"),
    [
        (lambda p: _ingredient(p, {"w": torch.zeros(4)}, config={**CONFIG, "hidden_size": 8}), "in 'hidden_size'"),
        (lambda p: _ingredient(p, {"w": torch.zeros(4), "x": torch.zeros(1)}), "different tensor names"),
        (lambda p: _ingredient(p, {"w": torch.zeros(5)}), "has shape \\(5,\\)"),
        (lambda p: _ingredient(p, {"w": torch.zeros(4)}, vocab={"a": 0, "c": 1}), "different tokenizer vocabulary"),
        (lambda p: p.mkdir(), "b is not a model directory"),
    ],
)
def test_mismatches_fail_before_anything_is_written(tmp_path, make_b, message):
    a = _ingredient(tmp_path / "a", {"w": torch.zeros(4)})
    make_b(tmp_path / "b")
    with pytest.raises(SalsaError, match=message):
        build_soup([a, tmp_path / "b"], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".soup")] == []


def test_corrupt_and_missing_files_are_named(tmp_path):
    a, b = _pair(tmp_path)
    data = (b / "model.safetensors").read_bytes()
    (b / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(SoupError, match="b/model.safetensors: corrupt safetensors file"):
        build_soup([a, b], tmp_path / "soup")
    (b / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(SoupError, match="corrupt safetensors file"):
        read_header(b / "model.safetensors")
    (b / "model.safetensors").unlink()
    with pytest.raises(SoupError, match="no safetensors weights"):
        build_soup([a, b], tmp_path / "soup")
    with pytest.raises(SoupError, match="at least two models"):
        build_soup([a], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_uniform_soup_of_identical_models_is_the_model(tmp_path, tiny_model_dir):
    for k in (2, 4):
        out = build_soup([tiny_model_dir] * k, tmp_path / f"soup{k}")
        original, souped = (
            load_file(str(tiny_model_dir / "model.safetensors")),
            load_file(str(out / "model.safetensors")),
        )
        assert all(torch.equal(original[name], souped[name]) for name in original)


def test_soup_of_real_models_round_trips_through_transformers(tmp_path, tokenizer):
    from salsa.models import save_tiny_model

    a = save_tiny_model(tmp_path / "a", tokenizer, seed=1)
    b = save_tiny_model(tmp_path / "b", tokenizer, seed=2)
    out = build_soup([a, b], tmp_path / "soup", [0.3, 0.7])
    loaded = AutoModelForCausalLM.from_pretrained(out)
    models = [AutoModelForCausalLM.from_pretrained(p) for p in (a, b)]
    in_memory = soup_state_dict(models, [0.3, 0.7])
    state = loaded.state_dict()
    assert all(torch.equal(state[name], in_memory[name]) for name in in_memory)
    # Tied embeddings: the output projection is the souped input embedding.
    assert torch.equal(loaded.lm_head.weight, loaded.model.embed_tokens.weight)
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert torch.equal(soup_state_dict([a, b], [0.3, 0.7])["model.norm.weight"], in_memory["model.norm.weight"])


def test_lora_ingredients_give_the_soup_of_the_merged_models(tiny_sft_config, tmp_path):
    import dataclasses

    from salsa import train_sft

    cfg = dataclasses.replace(tiny_sft_config, use_lora=True, learning_rate=1e-2, lora_dropout=0.0, max_steps=3)
    merged = train_sft(cfg, seeds=[0, 1])
    from_adapters = build_soup([p / "adapter" for p in merged], tmp_path / "from_adapters")
    from_merged = build_soup(merged, tmp_path / "from_merged")
    x, y = load_file(str(from_adapters / "model.safetensors")), load_file(str(from_merged / "model.safetensors"))
    assert x.keys() == y.keys()
    assert all(torch.allclose(x[k], y[k], atol=1e-7) for k in x)


def test_runtime_and_generation_config_fields_do_not_block_a_soup(tmp_path):
    a, _ = _pair(tmp_path)
    state = load_file(str(a / "model.safetensors"))
    runtime = {"use_cache": False, "dtype": "bfloat16", "transformers_version": "5.0.0", "temperature": 0.7}
    b = _ingredient(tmp_path / "b2", state, config=CONFIG | runtime)
    build_soup([a, b], tmp_path / "soup")
    with pytest.raises(SoupError, match="differs .* in 'hidden_size'"):
        build_soup([a, _ingredient(tmp_path / "c", state, config=CONFIG | {"hidden_size": 8})], tmp_path / "s2")


def test_mergekit_reproduces_a_lora_soup_bit_for_bit_from_its_yaml(tiny_sft_config, tmp_path, monkeypatch):
    pytest.importorskip("mergekit")
    import dataclasses

    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    from salsa import train_sft

    cfg = dataclasses.replace(tiny_sft_config, use_lora=True, learning_rate=1e-2, lora_dropout=0.0, max_steps=3)
    adapters = [p / "adapter" for p in train_sft(cfg, seeds=[0, 1, 2])]  # K = 3: the order of rounding matters
    soup = build_soup(adapters, tmp_path / "soup", [0.5, 0.3, 0.2])

    provenance = json.loads((soup / "soup.json").read_text())
    base = str(Path(tiny_sft_config.model).resolve())
    for ingredient, adapter in zip(provenance["ingredients"], adapters, strict=True):
        assert ingredient["path"] == str(adapter.resolve()) and ingredient["base"] == base
        digests = {adapter / f: d for f, d in ingredient["sha256"].items()}
        digests |= {Path(base) / f: d for f, d in ingredient["base_sha256"].items()}
        assert "adapter_model.safetensors" in ingredient["sha256"] and ingredient["base_sha256"]
        assert all(sha256_file(file) == digest for file, digest in digests.items())  # files that exist
    merge = yaml.safe_load((soup / "mergekit.yaml").read_text())
    assert [m["model"] for m in merge["models"]] == [f"{base}+{a.resolve()}" for a in adapters]

    monkeypatch.chdir(tmp_path.parent)  # absolute paths: the yaml runs from any directory
    options = MergeOptions(lora_merge_cache=str(tmp_path / "lora-cache"), quiet=True)
    run_merge(MergeConfiguration.model_validate(merge), str(tmp_path / "by-mergekit"), options)
    ours = load_file(str(soup / "model.safetensors"))
    theirs = load_file(str(tmp_path / "by-mergekit" / "model.safetensors"))
    assert set(ours) <= set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ---------------------------------------------------------------- merges beside linear: slerp, expo, liti


def test_merge_methods_resolve_to_their_weights_and_refuse_what_they_do_not_read():
    assert resolve_merge(3).weights == [1 / 3] * 3  # linear, uniform
    expo = resolve_merge(2, "expo", expo_alpha=0.5)
    assert (expo.weights, expo.parameters) == ([-0.5, 1.5], {"expo_alpha": 0.5})  # B + 0.5 (B - A)
    assert resolve_merge(2, "liti", eta=0.25).weights == [0.75, 0.25]  # (1 - eta) A + eta B
    slerp_merge = resolve_merge(2, "slerp", t=0.3)
    assert (slerp_merge.weights, slerp_merge.parameters) == (None, {"t": 0.3})  # per tensor, from the tensors
    for method, kwargs, message in [
        ("slerp", {"t": 0.5, "num_models": 3}, "slerp merges exactly two models .*, got 3"),
        ("liti", {}, "liti needs soup.eta"),
        ("linear", {"t": 0.5}, "soup.t is a setting of method slerp, but soup.method is linear"),
        ("expo", {"expo_alpha": 0.5, "weights": [0.5, 0.5]}, "soup.weights is a setting of method linear"),
        ("expo", {"expo_alpha": 0.5, "allow_extrapolation": True}, "allow_extrapolation is for linear weights"),
        ("expo", {"expo_alpha": 0.0}, "expo_alpha must be > 0"),
        ("liti", {"eta": 1.5}, r"soup.eta=1.5 lies outside \[0, 1\]"),
        ("slerp", {"t": float("nan")}, "soup.t must be a finite number"),
        ("dare", {}, "soup.method must be one of linear, slerp, expo, liti"),
    ]:
        with pytest.raises(SoupError, match=message):
            resolve_merge(kwargs.pop("num_models", 2), method, **kwargs)


@pytest.mark.parametrize(
    ("a", "b", "t", "expected"),
    [
        ([1.0, 0.0], [0.0, 1.0], 0.5, [0.5**0.5, 0.5**0.5]),  # orthogonal: the middle of the quarter circle
        ([1.0, 0.0], [0.0, 1.0], 1 / 3, [3**0.5 / 2, 0.5]),  # a third of the way: 30 degrees
        ([3.0, 0.0], [0.0, 4.0], 0.5, [3 * 0.5**0.5, 4 * 0.5**0.5]),  # the angle only: lengths are not normalised
        # 135 degrees: both weights sin(67.5 deg) / sin(135 deg) = 0.92388 / 0.70711 = 1.30656
        ([1.0, 0.0], [-1.0, 1.0], 0.5, [0.0, 1.30656]),
        ([1.0, 2.0], [2.0, 4.0], 0.25, [1.25, 2.5]),  # parallel: the straight line (1 - t) a + t b
        ([1.0, 0.0], [-1.0, 0.0], 0.5, [0.0, 0.0]),  # antiparallel: the straight line too
        ([0.0, 0.0], [0.0, 3.0], 0.5, [0.0, 3 * 0.5**0.5]),  # a zero tensor's norm counts as 1: cos 0, 90 degrees
        ([1.0, 0.0], [0.0, 1.0], 0.0, [1.0, 0.0]),  # the ends are the two models
        ([1.0, 0.0], [0.0, 1.0], 1.0, [0.0, 1.0]),
    ],
)
def test_slerp_matches_hand_computation(a, b, t, expected):
    assert torch.allclose(slerp(torch.tensor(a), torch.tensor(b), t), torch.tensor(expected), atol=1e-5)


def test_slerp_matches_mergekits_slerp_function():
    mergekit_slerp = pytest.importorskip("mergekit.merge_methods.slerp").slerp
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(64, 48, generator=generator)
    cases = {
        "independent": torch.randn(64, 48, generator=generator),
        "close": a + 0.3 * torch.randn(64, 48, generator=generator),  # cos 0.96: the arc
        "nearly parallel": a + 0.01 * torch.randn(64, 48, generator=generator),  # cos > 0.9995: the straight line
        "bfloat16": torch.randn(64, 48, generator=generator).bfloat16(),
    }
    for case, b in cases.items():
        first = a.to(b.dtype)
        for t in (0.0, 0.3, 0.5, 0.9):
            ours = slerp(first, b, t)
            # mergekit merges a batch of tensors at once, each flattened behind a leading axis; it returns the
            # inputs' dtype (its yaml's `dtype: float32` loads them as float32: so does this)
            theirs = mergekit_slerp(torch.tensor([t]), first.float()[None], b.float()[None])[0]
            assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (case, t, (ours - theirs).abs().max())


def _merged(out):
    return load_file(str(out / "model.safetensors"))


def test_streamed_expo_liti_and_slerp_equal_hand_computations(tmp_path, monkeypatch):
    a = _ingredient(tmp_path / "a", {"w": torch.tensor([1.0, 2.0, 3.0, 4.0]), "arc": torch.tensor([3.0, 0.0]),
                                     "steps": torch.tensor([7])})  # fmt: skip
    b = _ingredient(tmp_path / "b", {"w": torch.tensor([3.0, 6.0, 9.0, 12.0]), "arc": torch.tensor([0.0, 4.0]),
                                     "steps": torch.tensor([7])})  # fmt: skip
    expo = build_soup([a, b], tmp_path / "expo", method="expo", expo_alpha=0.5)  # B + 0.5 (B - A)
    assert torch.equal(_merged(expo)["w"], torch.tensor([4.0, 8.0, 12.0, 16.0]))
    liti = build_soup([a, b], tmp_path / "liti", method="liti", eta=0.25)  # 0.75 A + 0.25 B
    assert torch.equal(_merged(liti)["w"], torch.tensor([1.5, 3.0, 4.5, 6.0]))
    for out, method, parameters, weights in [
        (expo, "expo", {"expo_alpha": 0.5}, [-0.5, 1.5]),
        (liti, "liti", {"eta": 0.25}, [0.75, 0.25]),
    ]:
        provenance = json.loads((out / "soup.json").read_text())
        assert (provenance["method"], provenance["parameters"]) == (method, parameters)
        assert [i["weight"] for i in provenance["ingredients"]] == weights
        merge = yaml.safe_load((out / "mergekit.yaml").read_text())
        assert merge["merge_method"] == "linear" and merge["parameters"] == {"normalize": False}
        assert [m["parameters"]["weight"] for m in merge["models"]] == weights

    # Slerp, one element per streamed piece: the norms and dot product are sums over the pieces.
    monkeypatch.setattr("salsa.weights.merge.CHUNK_ELEMENTS", 1)
    from salsa.weights import reader

    hashed_from, real_hash_file = [], reader.hash_file  # where each file's hash went on after the reads

    def hash_file(hasher, file, start=0):
        hashed_from.append(start)
        return real_hash_file(hasher, file, start)

    monkeypatch.setattr(reader, "hash_file", hash_file)
    monkeypatch.setenv("SALSA_CACHE", str(tmp_path / "cache"))  # the soups above cached the digests
    merged = _merged(build_soup([a, b], tmp_path / "slerp", method="slerp", t=0.5))
    assert len(hashed_from) == 2 and all(start > 0 for start in hashed_from)  # the tail: no file read a third time
    assert torch.allclose(merged["arc"], torch.tensor([3 * 0.5**0.5, 4 * 0.5**0.5]))  # orthogonal: 45 degrees
    assert torch.allclose(merged["w"], torch.tensor([2.0, 4.0, 6.0, 8.0]))  # parallel: the straight line
    assert torch.equal(merged["steps"], torch.tensor([7]))
    provenance = json.loads((tmp_path / "slerp" / "soup.json").read_text())
    assert (provenance["method"], provenance["parameters"]) == ("slerp", {"t": 0.5})
    assert "weight" not in provenance["ingredients"][0]  # slerp's weights differ by tensor
    # Read twice, hashed once, right: the digests are those of the files.
    assert [i["sha256"]["model.safetensors"] for i in provenance["ingredients"]] == [
        sha256_file(d / "model.safetensors") for d in (a, b)
    ]


def test_streamed_slerp_in_pieces_equals_the_in_memory_slerp(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "salsa.weights.merge.CHUNK_ELEMENTS", 3
    )  # every tensor spans several pieces, the last one partial
    generator = torch.Generator().manual_seed(0)
    states = [
        {"w": torch.randn(5, 2, generator=generator), "h": torch.randn(7, generator=generator).to(torch.bfloat16)}
        for _ in range(2)
    ]
    dirs = [_ingredient(tmp_path / f"m{i}", state) for i, state in enumerate(states)]
    streamed = _merged(build_soup(dirs, tmp_path / "slerp", method="slerp", t=0.3))
    in_memory = soup_state_dict(states, method="slerp", t=0.3)
    assert streamed.keys() == in_memory.keys()
    assert streamed["h"].dtype == torch.bfloat16
    # The pieces' float64 sums round differently from one whole-tensor sum, by far less than float32 resolves.
    assert all(torch.allclose(streamed[k].float(), in_memory[k].float(), rtol=1e-6, atol=1e-7) for k in streamed)


def test_mergekit_reproduces_slerp_expo_and_liti_from_their_yaml(tmp_path, tokenizer):
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    from salsa.models import save_tiny_model

    sft, rl = save_tiny_model(tmp_path / "sft", tokenizer, seed=1), save_tiny_model(tmp_path / "rl", tokenizer, seed=2)

    def by_mergekit(config: dict, name: str) -> dict[str, torch.Tensor]:
        run_merge(MergeConfiguration.model_validate(config), str(tmp_path / name), MergeOptions(quiet=True))
        return _merged(tmp_path / name)

    for method, parameter in [("slerp", {"t": 0.3}), ("expo", {"expo_alpha": 0.5}), ("liti", {"eta": 0.3})]:
        soup = build_soup([sft, rl], tmp_path / method, method=method, **parameter)
        merge = yaml.safe_load((soup / "mergekit.yaml").read_text())
        ours, theirs = _merged(soup), by_mergekit(merge, f"{method}-by-mergekit")
        assert set(ours) <= set(theirs)
        if method == "slerp":  # mergekit sums each tensor's dot product in float32 pieces of its own
            assert merge["merge_method"] == "slerp" and merge["base_model"] == str(sft.resolve())
            assert all(torch.allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-7) for k in ours)
        else:  # the same linear arithmetic
            assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    # ExPO as mergekit's task arithmetic, sft + 1.5 (rl - sft): the same model up to float32 rounding.
    task_arithmetic = {
        "merge_method": "task_arithmetic", "base_model": str(sft), "dtype": "float32",
        "models": [{"model": str(rl), "parameters": {"weight": 1.5}}],
    }  # fmt: skip
    ours, theirs = _merged(tmp_path / "expo"), by_mergekit(task_arithmetic, "expo-task-arithmetic")
    assert all(torch.allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7) for k in ours)


def test_only_a_linear_midpoint_is_the_landscapes_soup(tmp_path):
    from salsa.config import EvalConfig
    from salsa.evaluation.summary import _midpoint_is_soup

    a, b = _pair(tmp_path)
    midpoints = {
        "linear": build_soup([a, b], tmp_path / "linear"),
        "liti at 0.5": build_soup([a, b], tmp_path / "liti", method="liti", eta=0.5),
        "slerp at 0.5": build_soup([a, b], tmp_path / "slerp", method="slerp", t=0.5),  # on the arc, not the line
    }
    found = {name: _midpoint_is_soup(EvalConfig(soup_model=str(soup), landscape_models=[str(a), str(b)]))
             for name, soup in midpoints.items()}  # fmt: skip
    assert found == {"linear": True, "liti at 0.5": True, "slerp at 0.5": False}
