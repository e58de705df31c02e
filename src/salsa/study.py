"""A study's results doc, regenerated from its committed raw data, so that every number in it can be checked.

    salsa study archive runs/study docs/results/my-study     # once the run is done: the data the doc is made from
    salsa study render docs/results/my-study                 # every number, table and figure, from that data

`archive` copies what the numbers come from into the study folder, compressed: the run's resolved config and
timings, the evaluation's config and samples (every response with its scores and KL), the matched-KL notes, each
RL run's config, metrics and completion record, and the reward model's, soup's and data's records. Paths inside
the run are stored relative to it.

`render` rebuilds a run-like tree from that folder, recomputes the evaluation's summary with salsa's own code (the
`summarise` the eval stage runs), draws the report's figures into the folder and fills its `template.md` (a Jinja
template over the summary) into the doc named in the folder's `study.json`. tests/test_study.py renders every
committed study and compares the output with the committed doc, so a number cannot drift from its data.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from salsa.config import EvalConfig
from salsa.config_loading import load_stage_config
from salsa.errors import DataError
from salsa.io import atomic_file, atomic_write_text, read_json

RUN_ROOT = "{RUN}"  # the run directory, in archived text files
DATA = "data"  # the study folder's archive
TEXT_FILES = ("config.yaml", "salsa_complete.json", "soup.json", "eval.json", "datasheet.md", "pipeline.json")


def _archived_files(run: Path) -> list[Path]:
    """The files of a finished `salsa run` directory a study doc is computed from."""
    wanted = [run / "config.yaml", run / "pipeline.json", run / "eval" / "config.yaml", run / "eval" / "results.json",
              run / "eval" / "samples.jsonl", run / "reward" / "eval.json", run / "soup" / "soup.json",
              run / "data" / "datasheet.md"]  # fmt: skip
    for rl_run in sorted(p.parent for p in (run / "rl").rglob("metrics.jsonl")):
        wanted += [rl_run / "config.yaml", rl_run / "metrics.jsonl", rl_run / "salsa_complete.json"]
    for sft in sorted((run / "sft").glob("sft-*")):
        wanted += [sft / "salsa_complete.json", sft / "metrics.jsonl"]
    return [p for p in wanted if p.is_file()]


def archive(run_dir: str | Path, study_dir: str | Path) -> list[Path]:
    """Copy a finished run's data into `study_dir/data` (JSONL gzip-compressed; the run's path made relative)."""
    run, out = Path(run_dir).resolve(), Path(study_dir) / DATA
    if not (run / "eval" / "samples.jsonl").is_file():
        raise DataError(f"{run}: no eval/samples.jsonl; archive a `salsa run` directory whose eval stage finished")
    written = []
    for source in _archived_files(run):
        relative = source.relative_to(run)
        text = source.read_text(encoding="utf-8").replace(str(run), RUN_ROOT)
        if source.suffix == ".jsonl":
            target = out / f"{relative}.gz"
            with atomic_file(target) as tmp:
                # mtime 0: the same data gives the same bytes, so a re-archive changes nothing in git.
                with gzip.GzipFile(tmp, "wb", mtime=0) as compressed:
                    compressed.write(text.encode("utf-8"))
        else:
            target = out / relative
            atomic_write_text(target, text)
        written.append(target)
    return written


def restore(study_dir: Path, root: Path) -> None:
    """The archived files as a run directory at `root` (paths inside them pointing there)."""
    data = study_dir / DATA
    if not data.is_dir():
        raise DataError(f"{study_dir}: no {DATA}/ folder; make it with `salsa study archive RUN_DIR {study_dir}`")
    for source in data.rglob("*"):
        if not source.is_file():
            continue
        relative = source.relative_to(data)
        if source.suffix == ".gz":
            text = gzip.decompress(source.read_bytes()).decode("utf-8")
            relative = relative.with_suffix("")
        else:
            text = source.read_text(encoding="utf-8")
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace(RUN_ROOT, str(root)), encoding="utf-8")


def recompute(root: Path) -> dict[str, Any]:
    """The evaluation's summary, recomputed from the restored samples with the eval stage's own code."""
    from salsa.evaluation.soup_health import summarise_soup_health
    from salsa.evaluation.summary import summarise
    from salsa.tasks import recorded_gold_version

    config = load_stage_config(EvalConfig, "eval", root / "eval" / "config.yaml")
    rows = [json.loads(line) for line in (root / "eval" / "samples.jsonl").read_text().splitlines()]
    landscape = [r for r in rows if "alpha" in r]
    matched = [r for r in rows if "matched" in r]
    health = [r for r in rows if "member" in r]
    samples = [r for r in rows if not any(k in r for k in ("alpha", "matched", "member"))]
    recorded = read_json(root / "eval" / "results.json")
    judges, splits = recorded["judges"], list(recorded["settings"]["prompts"])
    results = summarise(config, samples, landscape, judges, splits, matched, recorded.get("matched_kl_notes", []), None)
    stats = {"num_samples": config.bootstrap_samples, "confidence": config.confidence, "seed": config.seed}
    results["soup_health"] = summarise_soup_health(health, judges, config, stats) if health else None
    results["settings"]["gold_judge_version"] = recorded_gold_version(recorded)  # the judge that scored the samples
    return results


def render(study_dir: str | Path) -> Path:
    """Recompute the study's numbers from its data, draw its figures and write its doc; returns the doc's path."""
    import jinja2
    import matplotlib

    from salsa.plots import plots_for
    from salsa.report import headline_comparison

    study = Path(study_dir)
    spec_file = study / "study.json"
    if not spec_file.is_file():
        raise DataError(f"{spec_file} does not exist; a study folder names its doc there ({{'doc': '../name.md'}})")
    spec = read_json(spec_file)
    with tempfile.TemporaryDirectory(prefix="salsa-study-") as tmp:
        root = Path(tmp)
        restore(study, root)
        results = recompute(root)
        context = {**_run_records(root), "results": results, "r": results, "headline": headline_comparison(results)}
        matplotlib.use("Agg")
        for file, _, plot in plots_for(results):
            with atomic_file(study / file) as target:
                plot(results, target)
    template = jinja2.Environment(
        loader=jinja2.FileSystemLoader(study), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    ).get_template("template.md")
    template.globals.update(FORMATS)
    doc = (study / spec["doc"]).resolve()
    atomic_write_text(doc, template.render(**context))
    return doc


def _run_records(root: Path) -> dict[str, Any]:
    """The run's other records, for the doc: timings, reward model and soup records, each RL run's summary."""
    runs = {}
    for marker in sorted((root / "rl").rglob("salsa_complete.json")):
        name = str(marker.parent.relative_to(root / "rl"))
        metrics = [json.loads(line) for line in (marker.parent / "metrics.jsonl").read_text().splitlines()]
        runs[name] = {"marker": read_json(marker), "metrics": metrics}
    optional = {"pipeline": root / "pipeline.json", "reward": root / "reward" / "eval.json",
                "soup": root / "soup" / "soup.json"}  # fmt: skip
    records = {name: read_json(path) if path.is_file() else None for name, path in optional.items()}
    return {**records, "runs": runs}


def pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}%"


def signed(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}f}"


def interval(bounds, formatter=signed, **kwargs) -> str:
    low, high = bounds
    return f"[{formatter(low, **kwargs)}, {formatter(high, **kwargs)}]"


def mean(values) -> float:
    return float(np.mean(list(values)))


def find(items: list[dict], **fields) -> dict:
    """The one item of `items` with these field values (a comparison, say); an error names what is missing."""
    found = [item for item in items if all(item.get(k) == v for k, v in fields.items())]
    if len(found) != 1:
        raise DataError(f"study template: {len(found)} items match {fields}, expected exactly one")
    return found[0]


FORMATS = {"pct": pct, "signed": signed, "interval": interval, "mean": mean, "find": find, "round": round}
