"""A study's doc regenerates from its committed data: archive a run, render the doc, and every committed study's doc
equals what its data renders to."""

import json
import shutil
from pathlib import Path

import pytest

from salsa.cli import main as cli_main
from salsa.errors import DataError
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
def study(tmp_path_factory, tiny_study):
    """The tiny study (conftest.tiny_study), archived with this module's template and rendered once: (its root, the
    study folder)."""
    folder = tmp_path_factory.mktemp("study") / "results" / "tiny"
    archive(tiny_study / "run", folder)
    (folder / "template.md").write_text(TEMPLATE)
    (folder / "study.json").write_text(json.dumps({"doc": "tiny.md"}))
    render(folder)
    return tiny_study, folder


def test_the_archive_recomputes_the_runs_own_summary(study, tmp_path):
    root, folder = study
    assert (folder / "data" / "jobs" / "salsa" / "seed-1" / "samples.jsonl.gz").is_file()
    assert str(root / "run") not in (folder / "data" / "eval" / "config.yaml").read_text()  # paths made relative
    restored = tmp_path / "restored"
    restore(folder, restored)
    recomputed = recompute(restored)
    original = json.loads((root / "run" / "eval" / "results.json").read_text())
    for key in ("policies", "comparisons", "landscape", "soup_health", "frontier", "factorial"):
        again = json.dumps(recomputed[key], sort_keys=True).replace(str(restored), str(root / "run"))
        assert again == json.dumps(original[key], sort_keys=True), key
    # The gold judge's version that scored the samples travels with them; results that record none were version 1's.
    assert recomputed["settings"]["gold_judge_version"] == original["settings"]["gold_judge_version"]
    assert original["settings"]["gold_judge_version"] == reviews.GOLD_JUDGE_VERSION
    for record in restored.glob("jobs/**/committed.json"):  # jobs committed before versions were recorded
        record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if "gold" not in k}))
    assert recompute(restored)["settings"]["gold_judge_version"] == 1


def test_render_fills_the_template_from_the_data_and_draws_the_figures(study, capsys, monkeypatch):
    root, folder = study
    rendered = (folder / "tiny.md").read_text()  # by the fixture: the CLI renders the folder again, from nothing
    for made in [folder / "tiny.md", *folder.glob("*.png")]:
        made.unlink()
    monkeypatch.setattr("sys.argv", ["salsa", "study", "render", str(folder)])
    cli_main()
    doc = (folder / "tiny.md").read_text()
    original = json.loads((root / "run" / "eval" / "results.json").read_text())
    headline = next(c for c in original["comparisons"] if c["a"] == "salsa" and c["b"] == "ppo")
    assert f"win rate {100 * headline['win_rate']:.1f}%" in doc
    assert f"Verdict by the rule: {headline['claim']}." in doc
    assert "- salsa/seed-1: 2 steps" in doc
    assert (folder / "win_rates.png").is_file() and (folder / "training.png").is_file()
    assert doc == rendered  # the same data renders the same doc


def test_every_committed_study_doc_is_what_its_data_renders(tmp_path):
    """Every study folder under docs/results (a folder with data/) renders to its committed doc; a folder that cannot
    render fails the test. With none committed, the test says so (and passes: nothing to check)."""
    folders = sorted(p.parent for p in RESULTS.glob("*/data"))
    if not folders:
        print("no study folder is committed under docs/results; nothing to re-render")
    for study_folder in folders:
        folder = tmp_path / "results" / study_folder.name
        shutil.copytree(study_folder, folder)
        doc_name = json.loads((study_folder / "study.json").read_text())["doc"]
        rendered = render(folder).read_text()
        assert rendered == (study_folder / doc_name).read_text(), f"re-render {study_folder} and commit the doc"


def test_a_grid_run_in_two_shards_renders_the_doc_of_the_whole_grid(study, tmp_path):
    """conftest.tiny_study ran shard 0 of 2 in run/ (archived then into after-shard-0/) and shard 1 of 2 in shard-1/,
    a run directory with its own base stages; run/ was finished after."""
    root, whole = study
    halves = tmp_path / "results" / "halves"
    shutil.copytree(root / "after-shard-0", halves)
    for name in ("template.md", "study.json"):
        shutil.copy(whole / name, halves / name)
    partial = render(halves).read_text()
    missing = "(init-soup/seed-0, ppo/seed-0, ref-soup/seed-0, salsa/seed-0)"
    assert partial.startswith(f"> **Incomplete: 4 of 9 planned jobs are missing** {missing}")
    assert "supported" not in partial and "contradicted" not in partial and "unresolved" not in partial
    assert "Verdict by the rule: withheld" in partial
    archive(root / "shard-1", halves)
    assert render(halves).read_text() == (whole / "tiny.md").read_text()
    # Archiving a shard again adds nothing; a job archived from a base with other digests is refused by name.
    archive(root / "shard-1", halves)
    manifest = json.loads((halves / "data" / "manifest.json").read_text())
    arms = ("init-soup", "ppo", "ref-soup", "salsa")
    assert sorted(manifest["jobs"]) == ["base", *(f"{arm}/seed-{s}" for arm in arms for s in (0, 1))]
    assert len(manifest["builds"]) == 1


def test_a_job_refuses_changed_inputs_and_a_committed_job_returns_at_once(study, monkeypatch, capsys, tmp_path):
    from salsa.grid import attempts, run_job

    root, _ = study
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)  # the shared run stays as it is
    record = json.loads((run / "jobs" / "ppo" / "seed-0" / "committed.json").read_text())
    assert run_job(run, "ppo/seed-0") == record and len(attempts(run, "ppo/seed-0")) == 1
    spec_file = run / "jobs" / "ppo" / "seed-0" / "job.json"
    spec = json.loads(spec_file.read_text())
    fresh = tmp_path / "fresh-job"
    shutil.copytree(run / "jobs" / "ppo" / "seed-0", fresh, ignore=shutil.ignore_patterns("committed.json"))
    changed = {**spec, "inputs": {name: "0" * 64 for name in spec["inputs"]}}
    (run / "jobs" / "copy").mkdir(exist_ok=True)
    target = run / "jobs" / "copy" / "x"
    shutil.copytree(fresh, target)
    (target / "job.json").write_text(json.dumps(changed))
    monkeypatch.setattr("sys.argv", ["salsa", "job", "run", str(run), "copy/x"])
    with pytest.raises(SystemExit) as exit_:
        cli_main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "job copy/x: inputs differ from its spec" in err and "sft-0" in err


def test_rendering_runs_no_code_and_writes_only_inside_the_folder(study, tmp_path):
    _, whole = study
    folder = tmp_path / "evil"
    shutil.copytree(whole, folder)
    marker = tmp_path / "pwned"
    for figure in folder.glob("*.png"):
        figure.unlink()
    (folder / "template.md").write_text(f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}")
    with pytest.raises(DataError, match="template.md"):
        render(folder)
    (folder / "template.md").write_text("{{ pct.__globals__ }}")
    with pytest.raises(DataError, match="SecurityError"):
        render(folder)
    assert not marker.exists()
    assert not list(folder.glob("*.png"))  # a template that fails is found before any figure is drawn
    outside = tmp_path / "victim.md"
    outside.write_text("keep me")
    (folder / "template.md").write_text("hello")
    for doc in (str(outside), "../victim.md", "."):
        (folder / "study.json").write_text(json.dumps({"doc": doc}))
        with pytest.raises(DataError, match="must name a file inside the study folder"):
            render(folder)
    assert outside.read_text() == "keep me"
    (folder / "study.json").write_text(json.dumps({"doc": "doc.md"}))
    (folder / "data" / "link.json").symlink_to(outside)
    with pytest.raises(DataError, match="symbolic link"):
        render(folder)
    (folder / "data" / "link.json").unlink()
    bomb = folder / "data" / "jobs" / "base" / "samples.jsonl.gz"
    monkeypatch_limit = 1000
    import salsa.study as study_module

    original = study_module.MAX_DECOMPRESSED
    study_module.MAX_DECOMPRESSED = monkeypatch_limit
    try:
        with pytest.raises(DataError, match=f"{bomb.name}: expands to more than"):
            render(folder)
    finally:
        study_module.MAX_DECOMPRESSED = original
    assert render(folder).read_text() == "hello"
