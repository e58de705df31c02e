"""The results doc of the SALSA-against-PPO study (docs/results/salsa-vs-ppo-cpu/template.md) renders from a tiny
archived 2 x 2 study with every section and the study's own numbers, and renders a partial archive too."""

import json
import shutil
from pathlib import Path

import pytest

from salsa.study import archive, cell, recompute, render, restore

STUDY = Path(__file__).parent.parent / "docs" / "results" / "salsa-vs-ppo-cpu"
SECTIONS = [
    "## What was run",
    "## Is the soup a soup?",
    "## Headline: salsa against ppo",
    "## Init or reference? The 2 x 2",
    "## Matched KL, out of distribution and the reward model",
    "## Gold against KL",
    "## Text statistics: signs of reward gaming",
    "## Paired example responses",
    "## What this does not show",
    "## The runs",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_study):
    """The tiny study's 2 x 2 (conftest.tiny_study: 2 seeds per arm, the headline salsa against ppo), archived with
    the doc's template and study.json: (a folder of this module's, the study folder)."""
    root = tmp_path_factory.mktemp("study-doc")
    folder = root / "results" / STUDY.name
    archive(tiny_study / "run", folder)
    shutil.copy(STUDY / "template.md", folder / "template.md")
    # The committed study.json names the real study's design and commit; this tiny one has neither.
    (folder / "study.json").write_text(json.dumps({"doc": json.loads((STUDY / "study.json").read_text())["doc"]}))
    return root, folder


def _results(folder: Path, where: Path) -> dict:
    restore(folder, where)
    return recompute(where, json.loads((folder / "data" / "manifest.json").read_text())["jobs"])


def test_the_doc_renders_every_section_in_order_with_the_studys_numbers(study):
    root, folder = study
    doc = render(folder)
    assert doc == (folder / "README.md").resolve()  # study.json names the doc inside the folder
    text = doc.read_text()
    assert [text.index(section) for section in SECTIONS] == sorted(text.index(section) for section in SECTIONS)
    assert not text.startswith("> **Incomplete")
    results = _results(folder, root / "restored")
    headline = next(c for c in results["comparisons"] if (c["a"], c["b"], c["split"], c["judge"]) ==
                    ("salsa", "ppo", "in_distribution", "gold"))  # fmt: skip
    low, high = headline["ci"]["mean_difference"]
    assert f"mean difference **{headline['mean_difference']:+.3f}** [{low:+.3f}, {high:+.3f}]" in text
    assert f"**Verdict by the rule: {headline['claim']}**" in text
    per_seed = ", ".join(f"{d:+.3f}" for d in headline["seed_test"]["per_seed"])
    assert f"per-seed differences: {per_seed}" in text and "permutation p = " in text
    # the soup's health first: every ordered pair of members, the soup against each ingredient
    health = results["soup_health"]
    assert f"| **soup** | {_nats(health['kl']['soup||ingredient-0'])} | " in text
    assert "| ingredient-1 | gold judge |" in text
    # the 2 x 2: every cell an RL arm, every effect by every judge
    factorial = results["factorial"][0]
    assert set(factorial["cells"].values()) == {"salsa", "ppo", "init-soup", "ref-soup"}
    init = factorial["effects"]["gold"]["init"]
    assert f"| init | gold judge | {init['mean']:+.3f} [{init['ci'][0]:+.3f}, {init['ci'][1]:+.3f}] |" in text
    assert text.count("| interaction |") == 2
    # out of distribution and by the reward model, the headline pair
    assert "| out-of-distribution | gold judge |" in text and "| in-distribution | reward model |" in text
    assert "![Gold judge and reward model against KL to the SFT model along training](frontier.png)" in text
    assert (folder / "frontier.png").is_file()
    # the text statistics of every policy on both splits
    for name in ("sft", "ppo", "salsa", "init-soup", "ref-soup"):
        stats = results["text_stats"][name]["out_of_distribution"]
        assert f"| {name} | {stats['length']['mean']:.1f} [" in text.split("Out-of-distribution prompts:")[1]
    # the paired examples: every policy's response to the same prompt and sample
    assert len(results["examples"]) == 4
    for example in results["examples"]:
        assert f"**Prompt {example['index']}** (sample {example['sample']}): {cell(example['prompt'])}" in text
        for name, answer in example["responses"].items():
            assert f"| {name} | {answer['gold']:+.3f} | {answer['reward']:+.3f} | {cell(answer['response'])} |" in text
    assert "- **One model.**" in text and "- **One reward model.**" in text
    assert "| salsa/seed-1 | 2 |" in text
    assert render(folder).read_text() == text  # the same data renders the same doc


def _nats(entry: dict) -> str:
    return f"{entry['mean']:.2f} [{entry['ci'][0]:.2f}, {entry['ci'][1]:.2f}]"


def test_the_doc_cites_the_design_and_its_commit_from_study_json(study, tmp_path):
    """With the design file and its commit in study.json, 'What was run' names them, and the archived config's
    settings; without, it says they are not recorded."""
    _, whole = study
    assert "The design file and its commit are not recorded" in render(whole).read_text()
    folder = tmp_path / STUDY.name
    shutil.copytree(whole, folder)
    spec = json.loads((folder / "study.json").read_text())
    design = {"design": "examples/study_salsa_ppo_cpu.yaml", "commit": "0123456789abcdef"}
    (folder / "study.json").write_text(json.dumps({**spec, **design}))
    text = render(folder).read_text()
    assert "(../../../examples/study_salsa_ppo_cpu.yaml) at commit\n`0123456789abcdef`" in text
    assert "**task**: `reviews`" in text and "KL coefficient **0.05**" in text
    assert "| init-soup | soup:sft-0 | 2 | 2 |" in text


def test_a_partial_archive_renders_with_its_missing_jobs_and_no_verdict(study, tmp_path):
    """Jobs missing from the archive (a shard still to run): the doc renders, lists them, withholds every verdict and
    says the 2 x 2 lacks a cell."""
    _, whole = study
    folder = tmp_path / STUDY.name
    shutil.copytree(whole, folder)
    manifest = json.loads((folder / "data" / "manifest.json").read_text())
    for job in ("salsa/seed-1", "init-soup/seed-0", "init-soup/seed-1"):  # what archiving the other shards adds
        del manifest["jobs"][job]
        shutil.rmtree(folder / "data" / "jobs" / job)
        shutil.rmtree(folder / "data" / "rl" / job)
    (folder / "data" / "manifest.json").write_text(json.dumps(manifest))
    text = render(folder).read_text()
    assert text.startswith("> **Incomplete: 3 of 9 planned jobs are missing**")
    assert "**Verdict by the rule: withheld: the study is incomplete**" in text
    assert "| withheld: the study is incomplete |" in text
    lacking = "The 2 x 2 needs all four cells (salsa, ppo, init-soup, ref-soup) at one KL coefficient; this archive has"
    assert f"{lacking}\nppo, salsa, ref-soup." in text
    assert [text.index(section) for section in SECTIONS] == sorted(text.index(section) for section in SECTIONS)


def test_a_response_is_one_markdown_table_cell():
    assert cell("Great | *bold* <b>x</b> [link](u) a_b ~c~ `code` &amp;\\") == (
        r"Great \| \*bold\* \<b\>x\</b\> \[link\](u) a\_b \~c\~ \`code\` \&amp;\\"
    )
    assert cell("one\ntwo\r\nthree") == "one ⏎ two ⏎ three"
    assert cell("") == cell(" \n ") == "*(empty)*"


def test_a_seed_only_one_arm_has_is_left_out_and_named(study, tmp_path):
    """Seed i of each arm is compared with seed i of the others: while a shard is still running, a seed that only
    some arms have is left out of every comparison (not paired with another seed), and the doc names it."""
    _, whole = study
    folder = tmp_path / STUDY.name
    shutil.copytree(whole, folder)
    manifest = json.loads((folder / "data" / "manifest.json").read_text())
    for job in ("ppo/seed-1", "init-soup/seed-1", "ref-soup/seed-1"):  # salsa is one seed ahead
        del manifest["jobs"][job]
        shutil.rmtree(folder / "data" / "jobs" / job)
        shutil.rmtree(folder / "data" / "rl" / job)
    (folder / "data" / "manifest.json").write_text(json.dumps(manifest))
    results = _results(folder, tmp_path / "restored")
    assert results["seeds_left_out"] == ["salsa/seed-1"]
    headline = next(c for c in results["comparisons"] if (c["a"], c["b"]) == ("salsa", "ppo"))
    assert len(headline["seed_test"]["per_seed"]) == 1
    text = render(folder).read_text()
    assert "Left out of every comparison until the other arms of its seed are archived: salsa/seed-1." in text
