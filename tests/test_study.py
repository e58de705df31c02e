"""A study's doc regenerates from its committed data: archive a run, render the doc, and every committed study's doc
equals what its data renders to."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from salsa.cli import main as cli_main
from salsa.pipeline import run_pipeline
from salsa.study import archive, recompute, render, restore
from salsa.tasks import reviews

RESULTS = Path(__file__).parent.parent / "docs" / "results"
TEMPLATE = """# Tiny study

Headline: {{ r.headline.a }} against {{ r.headline.b }}, win rate {{ pct(headline.win_rate) }}
{{ interval(headline.ci.win_rate, pct) }}; per-seed differences {{ headline.seed_test.per_seed | length }}.
Verdict by the rule: {{ headline.claim }}. KL of salsa to SFT {{ signed(r.policies.salsa.kl_sft.mean, 2) }}.
{% for name, run in runs.items() %}- {{ name }}: {{ run.metrics | length }} steps
{% endfor %}"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("study")
    config = {
        "run": {"output_dir": str(root / "run"), "seeds": 2},
        "data": {"model": str(tiny_model_dir), "samples_per_prompt": 2, "max_new_tokens": 6},
        "reward": {"backbone": "causal", "model": str(tiny_model_dir), "num_epochs": 0.2, "max_length": 64},
        "sft": {"model": str(tiny_model_dir), "max_steps": 2, "batch_size": 4, "max_length": 64},
        "rl": {"steps": 2, "prompts_per_step": 4, "max_new_tokens": 6, "learning_rate": 1e-3},
        "eval": {"max_new_tokens": 6, "landscape_alphas": [0.0, 0.5, 1.0], "bootstrap_samples": 200},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    run_pipeline(root / "run.yaml", show_progress=False)
    folder = root / "results" / "tiny"
    archive(root / "run", folder)
    (folder / "template.md").write_text(TEMPLATE)
    (folder / "study.json").write_text(json.dumps({"doc": "../tiny.md"}))
    return root, folder


def test_the_archive_recomputes_the_runs_own_summary(study):
    root, folder = study
    assert (folder / "data" / "eval" / "samples.jsonl.gz").is_file()
    assert str(root / "run") not in (folder / "data" / "eval" / "config.yaml").read_text()  # paths made relative
    restored = root / "restored"
    restore(folder, restored)
    recomputed = recompute(restored)
    original = json.loads((root / "run" / "eval" / "results.json").read_text())
    for key in ("policies", "comparisons", "landscape", "soup_health", "frontier", "factorial"):
        again = json.dumps(recomputed[key], sort_keys=True).replace(str(restored), str(root / "run"))
        assert again == json.dumps(original[key], sort_keys=True), key
    # The gold judge's version that scored the samples travels with them; results that record none were version 1's.
    assert recomputed["settings"]["gold_judge_version"] == original["settings"]["gold_judge_version"]
    assert original["settings"]["gold_judge_version"] == reviews.GOLD_JUDGE_VERSION
    del original["settings"]["gold_judge_version"]
    (restored / "eval" / "results.json").write_text(json.dumps(original))
    assert recompute(restored)["settings"]["gold_judge_version"] == 1


def test_render_fills_the_template_from_the_data_and_draws_the_figures(study, capsys, monkeypatch):
    _, folder = study
    monkeypatch.setattr("sys.argv", ["salsa", "study", "render", str(folder)])
    cli_main()
    doc = (folder.parent / "tiny.md").read_text()
    original = json.loads((folder / "data" / "eval" / "results.json").read_text())
    headline = next(c for c in original["comparisons"] if c["a"] == "salsa" and c["b"] == "ppo")
    assert f"win rate {100 * headline['win_rate']:.1f}%" in doc
    assert f"Verdict by the rule: {headline['claim']}." in doc
    assert "- salsa/seed-1: 2 steps" in doc
    assert (folder / "win_rates.png").is_file() and (folder / "training.png").is_file()
    assert render(folder).read_text() == doc  # the same data renders the same doc


@pytest.mark.parametrize("spec", sorted(RESULTS.glob("*/study.json")), ids=lambda p: p.parent.name)
def test_every_committed_study_doc_is_what_its_data_renders(spec, tmp_path):
    folder = tmp_path / "results" / spec.parent.name
    shutil.copytree(spec.parent, folder)
    doc_name = json.loads(spec.read_text())["doc"]
    rendered = render(folder).read_text()
    assert rendered == (spec.parent / doc_name).resolve().read_text(), f"re-render {spec.parent} and commit the doc"
