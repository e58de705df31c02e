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


def test_an_archived_jsonl_file_is_the_same_bytes_each_time_it_is_written(tmp_path):
    from salsa.study import _read, _write

    text = '{"policy": "ppo", "gold": 0.5}\n' * 3
    first, second = (_write(tmp_path / name / "samples.jsonl", text) for name in ("a", "b"))
    assert first.name == "samples.jsonl.gz" and first.read_bytes() == second.read_bytes()
    assert _read(first) == text


def test_the_studys_figures_quoted_outside_its_doc_are_its_docs():
    """The README's row for the study and the extension rule's outcome quote the committed doc: every figure of the
    README's row (3 decimals) is in the doc, and the outcome's result rows are the doc's rows verbatim."""
    import re

    doc = (RESULTS / "salsa-vs-ppo-cpu" / "README.md").read_text()
    readme = (RESULTS.parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if "docs/results/salsa-vs-ppo-cpu/README.md" in line)
    figures = re.findall(r"[-+]?\d+\.\d{3}", row)
    assert figures and [f for f in figures if f not in doc] == []
    rule = (RESULTS.parent / "study-extension-salsa-vs-ppo-cpu.md").read_text()
    outcome = [
        line
        for line in rule[rule.index("## Outcome") :].splitlines()
        if re.match(r"\| (pre-registered|extended)", line)
    ]
    assert len(outcome) == 3 and [line for line in outcome if line not in doc.splitlines()] == []


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
    # Archiving a shard again adds nothing.
    archive(root / "shard-1", halves)
    manifest = json.loads((halves / "data" / "manifest.json").read_text())
    arms = ("init-soup", "ppo", "ref-soup", "salsa")
    assert sorted(manifest["jobs"]) == ["base", *(f"{arm}/seed-{s}" for arm in arms for s in (0, 1))]
    assert len(manifest["builds"]) == 1


def test_a_job_on_a_rebuilt_base_is_refused_by_name_or_joins_a_build_of_its_own(study, tmp_path):
    """Shard 1 archived as if one of its jobs had run on a base rebuilt elsewhere (the same configs, other digests):
    that job is refused, naming the inputs that differ, unless accepted; then it joins a second build, whose records
    are archived beside the first's, and the doc can say which jobs ran on which build."""
    root, whole = study
    folder = tmp_path / "results" / "rebuilt"
    shutil.copytree(root / "after-shard-0", folder)
    run = tmp_path / "shard-1"
    shutil.copytree(root / "shard-1", run)
    for file in run.rglob("*"):  # the copy's records name the copy
        if file.suffix in (".yaml", ".json", ".jsonl"):
            file.write_text(file.read_text().replace(str(root / "shard-1"), str(run)))
    spec_file = run / "jobs" / "salsa" / "seed-0" / "job.json"
    spec = json.loads(spec_file.read_text())
    changed = next(iter(spec["inputs"]))
    spec["inputs"][changed] = "0" * 64
    spec_file.write_text(json.dumps(spec))
    record = json.loads((run / "reward" / "eval.json").read_text())
    (run / "reward" / "eval.json").write_text(json.dumps({**record, "accuracy_vs_labels": 0.123}))
    with pytest.raises(DataError, match=rf"job salsa/seed-0: its base differs from the archive's \({changed}\)"):
        archive(run, folder)
    archive(run, folder, accept_rebuilt_base=True)
    manifest = json.loads((folder / "data" / "manifest.json").read_text())
    assert len(manifest["builds"]) == 2
    assert {job_id for job_id, job in manifest["jobs"].items() if job["build"] == 1} == {"salsa/seed-0"}
    assert json.loads((folder / "data" / "builds" / "1" / "reward" / "eval.json").read_text()) == {
        **record, "accuracy_vs_labels": 0.123}  # fmt: skip
    (folder / "study.json").write_text(json.dumps({"doc": "tiny.md"}))
    (folder / "template.md").write_text(
        "{% for b in builds %}build {{ b.number }}: {{ b.jobs | join(' ') }}; seeds {{ b.seeds | join(' ') }}; "
        "accuracy {{ b.reward.accuracy_vs_labels }}\n{% endfor %}on several builds: {{ seeds_on_several_builds }}"
    )
    others = " ".join(f"{arm}/seed-{s}" for arm in ("init-soup", "ppo", "ref-soup", "salsa") for s in (0, 1))
    assert render(folder).read_text() == (
        f"build 0: base {others.replace('salsa/seed-0 ', '')}; seeds 0 1; accuracy {record['accuracy_vs_labels']}\n"
        "build 1: salsa/seed-0; seeds 0; accuracy 0.123\non several builds: [0]"
    )


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


# The tiny template, and the pre-registered headline in the headline's own words (an extension's doc says both).
EXTENDED_TEMPLATE = (
    TEMPLATE + "{% if preregistered is not none %}Pre-registered, {{ preregistered_seeds }} seeds\n(complete: "
    "{{ preregistered_complete }}):\n{% with r = preregistered, headline = preregistered_headline %}"
    + TEMPLATE[TEMPLATE.index("Headline:") : TEMPLATE.index("{% for")]
    + "{% endwith %}{% endif %}"
)
NEW_SEEDS = ("salsa/seed-2", "ppo/seed-2", "init-soup/seed-2", "ref-soup/seed-2")


@pytest.fixture(scope="module")
def extended(study, tmp_path_factory):
    """The tiny study's run extended from 2 to 3 seeds (`run.seeds` only) in a copy of its run directory (there the
    base stages run again, on the same machine to the same bytes: its paths differ): seed 2 of two arms, archived then
    with --extend into a copy of the 2-seed study folder, then seed 2 of the other two. Returns (the run, that
    partly extended study folder)."""
    from salsa.pipeline import run_pipeline

    root, _ = study
    run = tmp_path_factory.mktemp("extended") / "run"
    shutil.copytree(root / "run", run)
    partial = _study_copy(study, run.parent, "partial")
    overrides = ["run.seeds=3", f"run.output_dir={run}"]
    assert run_pipeline(root / "run.yaml", overrides, show_progress=False, only=",".join(NEW_SEEDS[:2])) is None
    archive(run, partial, extend=True)
    assert run_pipeline(root / "run.yaml", overrides, show_progress=False, only=",".join(NEW_SEEDS[2:])) is None
    return run, partial


def _study_copy(study, tmp_path: Path, name: str) -> Path:
    """A copy of the tiny 2-seed study folder, with the template that shows the pre-registered result too."""
    folder = tmp_path / "results" / name
    shutil.copytree(study[1], folder)
    (folder / "template.md").write_text(EXTENDED_TEMPLATE)
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _headline(doc: str) -> str:
    """The headline's lines of a doc (from "Headline:" to the verdict's line)."""
    start = doc.index("Headline:")
    return doc[start : doc.index("\n", doc.index("Verdict by the rule:", start))]


def test_added_seeds_need_extend_and_the_preregistered_result_stands_while_they_come(study, extended, tmp_path):
    _, partial = extended
    folder = tmp_path / "partial"
    shutil.copytree(partial, folder)
    manifest = json.loads((folder / "data" / "manifest.json").read_text())
    planned = json.loads((study[1] / "data" / "manifest.json").read_text())["planned"]
    assert manifest["preregistered"] == {"seeds": 2, "planned": planned}
    assert len(manifest["planned"]) == 13 and "init-soup/seed-2" in manifest["planned"]
    assert len(manifest["builds"]) == 1  # the base built again in the copy is byte for byte the archive's
    doc = render(folder).read_text()
    missing = "(init-soup/seed-2, ref-soup/seed-2)"
    assert doc.startswith(
        f"> **Incomplete: 2 of 13 planned jobs are missing** {missing}; every verdict of the extended"
    )
    extended_headline, preregistered = doc.split("Pre-registered, 2 seeds\n(complete: True):\n")
    assert "Verdict by the rule: withheld" in extended_headline
    # The added seeds archived so far are not shown, anywhere: the extension is read once, at its 3 seeds.
    assert "The added seeds' jobs archived so far (ppo/seed-2, salsa/seed-2) are not shown" in doc.splitlines()[0]
    assert "per-seed differences 2." in extended_headline and "- salsa/seed-2:" not in doc and "- salsa/seed-1:" in doc
    # The pre-registered result is the 2-seed study's, its verdict not withheld: salsa/seed-2 and ppo/seed-2 are in.
    assert _headline(preregistered) == _headline((study[1] / "tiny.md").read_text())
    assert "withheld" not in preregistered
    # Extended before the pre-registered seeds were all in (shard 0 only): both results are withheld.
    early = tmp_path / "early"
    shutil.copytree(study[0] / "after-shard-0", early)
    for name in ("template.md", "study.json"):
        shutil.copy(folder / name, early / name)
    archive(extended[0], early, extend=True)
    preregistered = render(early).read_text().split("Pre-registered, 2 seeds\n(complete: False):\n")[1]
    assert "Verdict by the rule: withheld" in preregistered


def test_a_finished_extension_renders_both_results_and_says_first_when_their_verdicts_differ(
    study, extended, salsa_main, monkeypatch, tmp_path
):
    from salsa import report

    run, partial = extended
    folder = _study_copy(study, tmp_path, "full")
    before = _files(folder)
    code, _, err = salsa_main(["study", "archive", str(run), str(folder)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "its config.yaml differs from the archive's" in err and "archive it with --extend" in err
    assert _files(folder) == before  # nothing half-written
    code, _, err = salsa_main(["study", "archive", str(run), str(folder), "--extend"])
    assert code == 0, err
    assert len(json.loads((folder / "data" / "manifest.json").read_text())["planned"]) == 13
    doc = render(folder).read_text()
    extended_headline, preregistered = doc.split("Pre-registered, 2 seeds\n(complete: True):\n")
    assert extended_headline.startswith("# Tiny study")  # complete, with the same verdict: no banner
    assert "per-seed differences 3." in extended_headline and "per-seed differences 2." in preregistered
    assert _headline(preregistered) == _headline((study[1] / "tiny.md").read_text())
    assert "withheld" not in doc
    # The rest of an extension is archived as any run of the study is (its configs are the archive's now).
    finished = tmp_path / "finished"
    shutil.copytree(partial, finished)
    archive(run, finished)
    assert render(finished).read_text() == doc
    real = report.headline_comparison  # at 3 seeds the tiny study's verdict stays unresolved: make it differ

    def supported_at_three_seeds(results: dict) -> dict:
        headline = real(results)
        return {**headline, "claim": "supported"} if headline["seed_test"]["seeds"] == 3 else headline

    monkeypatch.setattr(report, "headline_comparison", supported_at_three_seeds)
    first = render(folder).read_text().splitlines()[0]
    assert first.startswith("> **The headline verdict changed with the added seeds**: unresolved at the 2 ")
    assert "supported at 3 seeds" in first


def test_an_extension_with_fewer_seeds_or_another_change_is_refused_by_name(study, extended, tmp_path):
    root, _ = study
    full, _ = extended
    folder = _study_copy(study, tmp_path, "refused")
    archive(full, folder, extend=True)
    changed = tmp_path / "changed"  # the run at another KL coefficient, as if it had run in its own directory
    shutil.copytree(full, changed, ignore=shutil.ignore_patterns("*.safetensors"))
    for config in changed.rglob("*.yaml"):
        config.write_text(config.read_text().replace(str(full), str(changed)))
    config = changed / "config.yaml"
    config.write_text(config.read_text().replace("\n  kl_coef: 0.05\n", "\n  kl_coef: 0.1\n"))
    before = _files(folder)
    refusals = {
        root / "run": "run.seeds 2, the archive's",
        full: "run.seeds 3, the archive's",
        changed: r"in rl.kl_coef;",
    }
    for run, named in refusals.items():
        with pytest.raises(DataError, match=named):
            archive(run, folder, extend=True)
        assert _files(folder) == before, run


def test_the_committed_study_template_reports_both_results_of_an_extension(extended, monkeypatch, tmp_path):
    from salsa import report

    run, partial = extended
    folder = tmp_path / "salsa-vs-ppo-cpu"
    shutil.copytree(partial, folder)
    for name in ("template.md", "study.json"):
        shutil.copy(RESULTS / "salsa-vs-ppo-cpu" / name, folder / name)
    doc = render(folder).read_text()
    assert "[extension rule](../../study-extension-salsa-vs-ppo-cpu.md)" in doc
    assert (RESULTS / "salsa-vs-ppo-cpu" / "../../study-extension-salsa-vs-ppo-cpu.md").is_file()
    rows = [line for line in doc.splitlines() if line.startswith(("| pre-registered |", "| extended |"))]
    assert rows[0].startswith("| pre-registered | 2 | ") and rows[0].endswith(" | unresolved |"), rows
    assert rows[1] == (
        "| extended | 3 planned | not shown until every planned job is archived | n/a | n/a | withheld: the study is "
        "incomplete |"
    )
    assert "(10 seeds, fixed before any added seed was run): withheld until every planned job is archived." in doc
    # Finished: a verdict at the nominal 0.05 stands only if its t-test p is below the corrected level, 0.04; the
    # sensitivity analysis (study.json: without seed 0) gets its row.
    archive(run, folder)
    assert "| extended, without seed 0 | 2 | " in render(folder).read_text()
    real = report.headline_comparison

    def supported_at_three_seeds(results: dict, p: float) -> dict:
        headline = real(results)
        if headline["seed_test"]["seeds"] != 3:  # the pre-registered 2 seeds keep their own verdict: unresolved
            return headline
        return {**headline, "claim": "supported", "seed_test": {**headline["seed_test"], "t_p": p}}

    monkeypatch.setattr(report, "headline_comparison", lambda results: supported_at_three_seeds(results, 0.045))
    doc = render(folder).read_text()
    assert "supported at 0.05, but p 0.045 is not, so the extended\nverdict is **unresolved**" in doc
    assert "Verdict by the rule: unresolved" in doc and "changed with the added seeds" not in doc
    assert doc.split("| extended | 3 | ")[1].split("\n")[0].endswith("| unresolved |")
    monkeypatch.setattr(report, "headline_comparison", lambda results: supported_at_three_seeds(results, 0.01))
    doc = render(folder).read_text()
    assert "p 0.010, so it stands: **supported**" in doc and "Verdict by the rule: supported" in doc
    assert doc.startswith("> **The headline verdict changed with the added seeds**: unresolved at the 2 ")
