"""A study's results doc, regenerated from its committed raw data, so that every number in it can be checked.

    salsa study archive runs/study docs/results/my-study     # the committed jobs' data the doc is made from
    salsa study render docs/results/my-study                 # every number, table and figure, from that data

`archive` adds what the numbers come from to the study folder's data/, compressed: the run's resolved config, the
evaluation's config, each committed job's samples, spec and completion record with its RL run's config, metrics and
record, and the base's records (data sheet, reward model, soup, SFT metrics). Paths inside the run are stored
relative to it. Jobs already archived are kept, so a study can be finished over several run directories, machines
or days (`salsa run --shard i/n` in each, then `archive` each): a job whose base (the inputs its spec names, by
SHA-256) differs from the archive's is refused unless `--accept-rebuilt-base` says a rebuilt base is acceptable
(the same configs give weights that differ by float rounding on another CPU); a rebuilt base's records are archived
too (data/builds/<n>/), so the doc can say which jobs ran on which build and quote each build's records. `--extend`
adds seeds after the pre-registered ones: a run whose configs differ from the archive's only by a larger `run.seeds`
replaces them and the planned grid, the pre-registered plan recorded.

`render` rebuilds a run-like tree from that folder, recomputes the evaluation's summary with salsa's own code from
the union of the jobs' samples, draws the report's figures into the folder and fills its `template.md` into the
doc named in the folder's `study.json`. While jobs of the planned grid are missing, the doc opens with their list
and every verdict is withheld. An extended study's doc gets the pre-registered result too, withheld only while the
pre-registered jobs are missing, and opens with a line when the two headline verdicts differ. Rendering is safe
on anyone's folder: the template runs in Jinja's sandbox with only salsa's formatting helpers, the doc must lie
inside the folder, symbolic links are refused and compressed files are size-checked as they are decompressed.
tests/test_study.py renders every committed study and compares the output with the committed doc, so a number
cannot drift from its data.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from salsa.config import EvalConfig
from salsa.config_loading import load_stage_config
from salsa.errors import DataError
from salsa.grid import JOBS, RUN_ROOT, committed, job_dir
from salsa.io import atomic_file, atomic_write_text, read_json, read_jsonl

DATA = "data"  # the study folder's archive
MANIFEST = "manifest.json"  # the planned jobs, the archived ones and the builds of the base they ran on
BUILDS = "builds"  # data/builds/<n>/: the base's records of build n > 0 (build 0's lie in data/ itself)
# The base's records a doc may quote, by the name its template knows them by.
BASE_RECORDS = {"pipeline": "pipeline.json", "reward": "reward/eval.json", "soup": "soup/soup.json",
                "normalisation": "normalisation/reward_normalisation.json"}  # fmt: skip
# The most a compressed archive file may expand to: samples of a large study are tens of MB.
MAX_DECOMPRESSED = 1 << 30
WITHHELD = "withheld: the study is incomplete"


def _write(target: Path, text: str) -> Path:
    """Write an archived text file: JSONL gzip-compressed, the same data to the same bytes (mtime 0, and no file name
    in the header: given one, gzip stores the temporary file's random name)."""
    if target.suffix == ".jsonl":
        target = target.with_name(target.name + ".gz")
        with atomic_file(target) as tmp, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed:
                compressed.write(text.encode("utf-8"))
    else:
        atomic_write_text(target, text)
    return target


def _base_files(run: Path) -> list[Path]:
    """The base's records a study doc may quote: the data sheet, the reward model's and the soup's records, the
    SFT models' metrics, the stages' timings, the shared reward normalisation."""
    wanted = [run / path for path in BASE_RECORDS.values()] + [run / "data" / "datasheet.md"]
    for sft in sorted((run / "sft").glob("sft-*")):
        wanted += [sft / "salsa_complete.json", sft / "metrics.jsonl"]
    return [p for p in wanted if p.is_file()]


def _job_files(run: Path, job_id: str) -> list[Path]:
    folder, rl = job_dir(run, job_id), run / "rl" / job_id
    wanted = [folder / "job.json", folder / "committed.json", folder / "samples.jsonl"]
    wanted += [rl / "config.yaml", rl / "metrics.jsonl", rl / "salsa_complete.json"]
    return [p for p in wanted if p.is_file()]


def _join_build(builds: list[dict], inputs: dict, job_id: str, accept_rebuilt: bool) -> int:
    """The build of the base a job ran on: the first whose inputs agree with the job's (same digests where both
    name a file), else a new one if `accept_rebuilt`, else an error naming the inputs that differ."""
    for number, build in enumerate(builds):
        if all(build.get(name, digest) == digest for name, digest in inputs.items()):
            build.update(inputs)
            return number
    if not accept_rebuilt:
        differ = sorted(name for name, digest in inputs.items() if name in builds[0] and builds[0][name] != digest)
        raise DataError(
            f"job {job_id}: its base differs from the archive's ({', '.join(differ)}); archive it with "
            "--accept-rebuilt-base if a base rebuilt from the same configs is acceptable (float rounding on another "
            "CPU), else rerun it on the archive's base"
        )
    builds.append(dict(inputs))
    return len(builds) - 1


def archive(
    run_dir: str | Path, study_dir: str | Path, accept_rebuilt_base: bool = False, extend: bool = False
) -> list[Path]:
    """Add a run directory's committed jobs to `study_dir/data` (JSONL gzip-compressed, the run's path made
    relative); jobs already archived are kept. With `extend`, the run may add seeds to the archive's (its configs
    differ only in a larger `run.seeds`): the archive then plans the run's grid and records the pre-registered one.
    Returns the files written."""
    run, out = Path(run_dir).resolve(), Path(study_dir) / DATA
    planned = sorted(p.parent.relative_to(run / JOBS).as_posix() for p in (run / JOBS).rglob("job.json"))
    done = [job_id for job_id in planned if committed(run, job_id) is not None]
    if not done:
        raise DataError(f"{run}: no committed job (jobs/*/committed.json); archive a run directory of `salsa run`")
    relative = lambda path: path.read_text(encoding="utf-8").replace(str(run), RUN_ROOT)  # noqa: E731
    configs = {
        "config.yaml": relative(run / "config.yaml"),
        "eval/config.yaml": relative(job_dir(run, done[0]) / "eval.yaml"),
    }
    manifest = read_json(out / MANIFEST) if (out / MANIFEST).is_file() else None
    if manifest is not None:
        _refuse_links(out)
        archived = {name: (out / name).read_text(encoding="utf-8") for name in configs}
        seeds = _check_same_study(run, out, archived, configs, extend)
        if seeds is not None:  # an extension: from now on the archive plans the run's grid
            manifest.setdefault("preregistered", {"seeds": seeds, "planned": manifest["planned"]})
            manifest["planned"] = planned
    else:
        manifest = {"planned": planned, "jobs": {}, "builds": []}
    specs = {job_id: read_json(job_dir(run, job_id) / "job.json") for job_id in done}
    new = [job_id for job_id in done if job_id not in manifest["jobs"]]
    builds = manifest["builds"]
    joined = {job_id: _join_build(builds, specs[job_id]["inputs"], job_id, accept_rebuilt_base or not builds)
              for job_id in new}  # fmt: skip
    written, first = [], not (out / "config.yaml").is_file()
    if first:
        written += [_write(out / p.relative_to(run), relative(p)) for p in _base_files(run)]
    if first or extend:  # an extension's configs replace the archive's: they plan the whole extended grid
        written += [_write(out / name, text) for name, text in configs.items()]
    for number in sorted(set(joined.values()) - {0}):
        folder = out / BUILDS / str(number)
        if not folder.is_dir():  # a rebuilt base's records, brought by the first of its jobs archived
            written += [_write(folder / p.relative_to(run), relative(p)) for p in _base_files(run)]
    for job_id in new:
        written += [_write(out / p.relative_to(run), relative(p)) for p in _job_files(run, job_id)]
        manifest["jobs"][job_id] = {"build": joined[job_id]}
    manifest["jobs"] = dict(sorted(manifest["jobs"].items()))
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return [*written, out / MANIFEST]


def _check_same_study(
    run: Path, out: Path, archived: dict[str, str], configs: dict[str, str], extend: bool
) -> int | None:
    """Refuse a run of another study: its config.yaml and eval config must be the archive's, or with `extend` differ
    only by more seeds. Returns the archive's `run.seeds` when the run extends it, else None."""
    if not extend and archived == configs:
        return None
    # Parsed, the run's path made a path ("{RUN}/data" alone would read as a YAML mapping).
    old, now = ({name: yaml.safe_load(text.replace(RUN_ROOT, f"/{RUN_ROOT}")) for name, text in texts.items()}
                for texts in (archived, configs))  # fmt: skip
    other = [
        key
        for name in configs
        for key in _changed_keys(old[name], now[name])
        if not _seeds_only(key, old[name], now[name])
    ]
    seeds = old["config.yaml"]["run"]["seeds"], now["config.yaml"]["run"]["seeds"]
    if not extend:
        hint = "; if it adds seeds to this study, archive it with --extend" if not other and seeds[1] > seeds[0] else ""
        name = next(name for name in configs if archived[name] != configs[name])
        raise DataError(f"{run}: its {name} differs from the archive's ({out / name}): another study's run{hint}")
    if other:
        raise DataError(
            f"{run}: its config differs from the archive's ({out / 'config.yaml'}) in {', '.join(sorted(set(other)))}; "
            "--extend adds seeds only: rerun the extension with the archive's config and a larger run.seeds"
        )
    if seeds[1] <= seeds[0]:
        raise DataError(
            f"{run}: its config.yaml has run.seeds {seeds[1]}, the archive's ({out / 'config.yaml'}) {seeds[0]}; "
            "--extend adds seeds: rerun with a larger run.seeds, or archive it without --extend"
        )
    return seeds[0]


def _changed_keys(old: dict, new: dict) -> list[str]:
    """The keys (section.key) whose values differ between two parsed configs."""
    changed = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{section}.{key}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
        elif a != b:
            changed.append(section)
    return changed


def _seeds_only(key: str, old: dict, new: dict) -> bool:
    """Whether a changed key is one that another number of seeds changes: `run.seeds`, or the evaluation's
    policies, each policy's paths one list extending the other."""
    if key == "run.seeds":
        return True
    if key != "eval.policies":
        return False
    before, after = old["eval"]["policies"], new["eval"]["policies"]
    prefix = lambda a, b: a[: len(b)] == b or b[: len(a)] == a  # noqa: E731
    return set(before) == set(after) and all(prefix(after[name], paths) for name, paths in before.items())


def _refuse_links(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            raise DataError(f"{path} is a symbolic link; a study folder holds plain files only")


def _read(source: Path) -> str:
    """An archived file's text; a compressed one is decompressed up to MAX_DECOMPRESSED bytes, no further."""
    if source.suffix != ".gz":
        return source.read_text(encoding="utf-8")
    with gzip.open(source, "rb") as f:
        data = f.read(MAX_DECOMPRESSED + 1)
    if len(data) > MAX_DECOMPRESSED:
        raise DataError(f"{source}: expands to more than {MAX_DECOMPRESSED >> 20} MB; not a salsa archive file")
    return data.decode("utf-8")


def restore(study_dir: Path, root: Path) -> dict:
    """The archived files as a run directory at `root` (paths inside them pointing there); returns the manifest."""
    data = study_dir / DATA
    if not (data / MANIFEST).is_file():
        raise DataError(f"{study_dir}: no {DATA}/{MANIFEST}; make it with `salsa study archive RUN_DIR {study_dir}`")
    _refuse_links(data)
    for source in data.rglob("*"):
        if source.is_file() and source.name != MANIFEST:
            relative = source.relative_to(data)
            target = root / (relative.with_suffix("") if source.suffix == ".gz" else relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_read(source).replace(RUN_ROOT, str(root)), encoding="utf-8")
    return read_json(data / MANIFEST)


def _present(config: EvalConfig, rows: list[dict]) -> tuple[EvalConfig, list[dict], list[str]]:
    """The evaluation restricted to the seeds whose samples are here (seed indices renumbered in order), those rows,
    and the seeds left out; comparisons and sweeps of a missing policy are left out.

    Seed i of one arm is compared with seed i of another, so a seed counts only once every arm that has samples
    (every policy with more than one seed planned) has it: an arm one seed ahead of the others (a shard still
    running) keeps that seed out of the analysis rather than unbalancing it."""
    have = {(r["policy"], r["seed_index"]) for r in rows if "policy" in r}
    arms = [name for name, paths in config.policies.items() if len(paths) > 1 and any(p == name for p, _ in have)]
    common = set.intersection(*({s for p, s in have if p == name} for name in arms)) if arms else set()
    left_out = sorted(f"{p}/seed-{s}" for p, s in have if p in arms and s not in common)
    renumber, policies = {}, {}
    for name, paths in config.policies.items():
        kept = [s for s in range(len(paths)) if (name, s) in have and (name not in arms or s in common)]
        renumber.update({(name, s): i for i, s in enumerate(kept)})
        if kept:
            policies[name] = [paths[s] for s in kept]
    rows = [{**r, "seed_index": renumber[(r["policy"], r["seed_index"])]} if "policy" in r else r for r in rows
            if "policy" not in r or (r["policy"], r["seed_index"]) in renumber]  # fmt: skip
    pairs = [c for c in (config.comparisons or []) if all(p in policies for p in c.split(":"))]
    # Sweeps are left out: a merge of two jobs' policies is drawn by the eval stage, not archived with a job.
    config = dataclasses.replace(config, policies=policies, comparisons=pairs if config.comparisons else None,
                                 sweeps={})  # fmt: skip
    return config, rows, left_out


def recompute(root: Path, jobs: list[str] | None = None) -> dict[str, Any]:
    """The evaluation's summary, recomputed from the restored jobs' samples with the eval stage's own code; with
    jobs missing, over the seeds that are here."""
    from salsa.evaluate import in_plan_order, plan_units, summarise_rows  # torch: `salsa study archive` never loads it

    config = load_stage_config(EvalConfig, "eval", root / "eval" / "config.yaml")
    jobs = jobs if jobs is not None else sorted(p.parent.relative_to(root / JOBS).as_posix()
                                                for p in (root / JOBS).rglob("samples.jsonl"))  # fmt: skip
    rows = [r for job_id in jobs for r in read_jsonl(job_dir(root, job_id) / "samples.jsonl")]
    rows = in_plan_order(rows, plan_units(config))
    config, rows, left_out = _present(config, rows)
    # The gold judge that scored the samples: each job records it; a record without one was version 1's.
    versions = {read_json(job_dir(root, job_id) / "committed.json").get("gold_judge_version", 1) for job_id in jobs}
    if config.task and len(versions) > 1:
        raise DataError(
            f"the archived jobs were scored by gold judge versions {sorted(versions)}; rerun the older ones"
        )
    results = summarise_rows(config, rows, gold_version=versions.pop() if config.task and versions else None)
    return {**results, "seeds_left_out": left_out}


def _withhold(results: dict) -> None:
    """Every verdict of an incomplete study: withheld (the pre-registered design is not what ran)."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in node:
                if key in ("claim", "claim_reason", "label", "reason", "verdict"):
                    node[key] = WITHHELD
                else:
                    walk(node[key])
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(results)


def render(study_dir: str | Path) -> Path:
    """Recompute the study's numbers from its data, draw its figures and write its doc; returns the doc's path."""
    # Only rendering draws and reads the report: `salsa study archive` loads neither torch nor matplotlib.
    import matplotlib

    from salsa.plots import plots_for
    from salsa.report import headline_comparison

    study = Path(study_dir)
    spec_file, template_file = study / "study.json", study / "template.md"
    for needed in (spec_file, template_file):
        if needed.is_symlink() or not needed.is_file():
            raise DataError(f"{needed}: missing or a symbolic link; a study folder holds study.json and template.md")
    spec = read_json(spec_file)
    doc = (study / str(spec.get("doc", ""))).resolve()
    if not doc.is_relative_to(study.resolve()) or doc == study.resolve() or doc.is_dir():
        raise DataError(f"{spec_file}: doc {spec.get('doc')!r} must name a file inside the study folder {study}")
    with tempfile.TemporaryDirectory(prefix="salsa-study-") as tmp:
        root = Path(tmp)
        manifest = restore(study, root)
        archived = list(manifest["jobs"])
        missing = [job_id for job_id in manifest["planned"] if job_id not in archived]
        preregistered = _preregistered(root, manifest)
        # Added seeds are read once, at the number the extension planned: until every planned job is in, the doc
        # shows only the jobs of the pre-registered design, never a result at an interim number of seeds.
        before = (manifest.get("preregistered") or {}).get("planned", archived)
        hidden = [job_id for job_id in archived if job_id not in before] if missing else []
        results = copy.deepcopy(preregistered["preregistered"]) if hidden else recompute(root, archived)
        if missing:
            _withhold(results)
        records = _run_records(root, [job_id for job_id in archived if job_id not in hidden])
        # study.json's "sensitivity": the headline of the complete study again without some seeds (e.g. those that
        # ran on another build of the base), stated before the study was complete.
        without = (spec.get("sensitivity") or {}).get("without_seeds", [])
        kept = [job_id for job_id in archived if _arm_and_seed(job_id)[1] not in without]
        sensitivity = headline_comparison(recompute(root, kept)) if without and not missing else None
        builds = _builds(root, manifest)
        # The study's own record (study.json: the doc, and e.g. the design file and its commit) and the run's
        # resolved config, for the doc to say what was run.
        config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
        headline = headline_comparison(results)
        level = (spec.get("extension") or {}).get("t_alpha")
        if level is not None and preregistered["preregistered"] is not None and not missing:
            _at_extension_level(headline, level)
        context = {**records, "results": results, "r": results, "headline": headline,
                   "missing_jobs": missing, "complete": not missing, "base_builds": len(builds), "builds": builds,
                   "seeds_on_several_builds": _seeds_on_several_builds(builds), "study": spec, "config": config,
                   "sensitivity_headline": sensitivity, **preregistered}  # fmt: skip
        # The template first: one that fails leaves the figures as they were, and costs no drawing.
        environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
        environment.globals.clear()  # only salsa's helpers: no cycler, joiner, namespace, range, ...
        environment.globals.update(FORMATS)
        try:
            text = environment.from_string(template_file.read_text(encoding="utf-8")).render(**context)
        except TemplateError as e:  # a mistake in the template, or what the sandbox refused to run
            raise DataError(f"{template_file}: {type(e).__name__}: {e}") from None
        matplotlib.use("Agg")
        for file, _, plot in plots_for(results):
            with atomic_file(study / file) as target:
                plot(results, target)
    if missing:
        left_out = results["seeds_left_out"]
        waiting = f" Left out of every comparison until the other arms of its seed are archived: {', '.join(left_out)}."
        verdicts = "every verdict of the extended study" if preregistered["preregistered"] else "every verdict"
        added = (
            f" The added seeds' jobs archived so far ({', '.join(hidden)}) are not shown until every planned job is "
            "in: the extended study is read once, at its full number of seeds; below are the pre-registered seeds."
        )
        text = (
            f"> **Incomplete: {len(missing)} of {len(manifest['planned'])} planned jobs are missing** "
            f"({', '.join(missing)}); {verdicts} below is withheld until they are archived."
            f"{waiting if left_out else ''}{added if hidden else ''}\n\n{text}"
        )
    elif preregistered["preregistered_complete"]:
        text = _verdicts_differ(preregistered, context["headline"], config["run"]["seeds"]) + text
    atomic_write_text(doc, text)
    return doc


def _preregistered(root: Path, manifest: dict) -> dict[str, Any]:
    """The template's view of the pre-registered study inside an extended one: its results over the jobs it planned
    (the seeds it pre-registered), withheld while any of them is missing; all None when the study was not extended."""
    record = manifest.get("preregistered")
    if record is None:
        return dict.fromkeys(("preregistered", "preregistered_headline", "preregistered_complete",
                              "preregistered_seeds"))  # fmt: skip
    from salsa.report import headline_comparison

    results = recompute(root, [job_id for job_id in manifest["jobs"] if job_id in record["planned"]])
    complete = all(job_id in manifest["jobs"] for job_id in record["planned"])
    if not complete:
        _withhold(results)
    return {"preregistered": results, "preregistered_headline": headline_comparison(results),
            "preregistered_complete": complete, "preregistered_seeds": record["seeds"]}  # fmt: skip


def _at_extension_level(headline: dict | None, level: float) -> None:
    """The extended study's headline verdict by its extension rule (study.json's extension.t_alpha): a supported or
    contradicted claim stands only if its t-test p is below `level` as well; else it is unresolved. The claim at the
    rule's own level stays readable as `claim_nominal`."""
    if headline is None or headline["claim"] not in ("supported", "contradicted"):
        return
    headline["claim_nominal"] = headline["claim"]
    if headline["seed_test"]["t_p"] >= level:
        headline["claim"] = "unresolved"
        headline["claim_reason"] = (
            f"{headline['claim_nominal']} at 0.05, but its t-test p {headline['seed_test']['t_p']:.3f} is not below "
            f"{level}, the extension rule's level"
        )


def _verdicts_differ(preregistered: dict, headline: dict | None, seeds: int) -> str:
    """The doc's first line when the extended study's headline verdict is not the pre-registered one; else ""."""
    before = (preregistered["preregistered_headline"] or {}).get("claim")
    after = (headline or {}).get("claim")
    if before == after:
        return ""
    return (
        f"> **The headline verdict changed with the added seeds**: {before} at the "
        f"{preregistered['preregistered_seeds']} pre-registered seeds, {after} at {seeds} seeds; both are reported "
        "below.\n\n"
    )


def _run_records(root: Path, jobs: list[str]) -> dict[str, Any]:
    """The run's other records, for the doc: timings, reward model and soup records, the summary of each RL run
    among `jobs`."""
    runs = {}
    for marker in sorted((root / "rl").rglob("salsa_complete.json")):
        name = marker.parent.relative_to(root / "rl").as_posix()
        if name not in jobs:
            continue
        metrics = [json.loads(line) for line in (marker.parent / "metrics.jsonl").read_text().splitlines()]
        runs[name] = {"marker": read_json(marker), "metrics": metrics}
    return {**_base_records(root), "runs": runs}


def _base_records(folder: Path) -> dict[str, Any]:
    """A base's records (BASE_RECORDS), None where the archive has none."""
    return {
        name: read_json(folder / path) if (folder / path).is_file() else None for name, path in BASE_RECORDS.items()
    }


def _builds(root: Path, manifest: dict) -> list[dict[str, Any]]:
    """Each build of the base, for the doc: its number, the jobs that ran on it, their seeds, each seed's arms on it
    and its records (those of a build archived before salsa kept every build's are None)."""
    builds = []
    for number in range(len(manifest["builds"])):
        jobs = [job_id for job_id, job in manifest["jobs"].items() if job["build"] == number]
        cells = [_arm_and_seed(job_id) for job_id in jobs]
        seeds = sorted({seed for _, seed in cells if seed is not None})
        arms = {seed: [arm for arm, of in cells if of == seed] for seed in seeds}
        folder = root if number == 0 else root / BUILDS / str(number)
        records = _base_records(folder) if folder.is_dir() else dict.fromkeys(BASE_RECORDS)
        builds.append({"number": number, "jobs": jobs, "seeds": seeds, "arms": arms, **records})
    return builds


def _arm_and_seed(job_id: str) -> tuple[str, int | None]:
    """The arm and RL seed of a job id (`salsa/seed-3`: salsa, 3; `ppo/kl-0.05/seed-1`: ppo/kl-0.05, 1); the base
    job has no seed."""
    arm, sep, seed = job_id.rpartition("/seed-")
    return (arm, int(seed)) if sep else (job_id, None)


def _seeds_on_several_builds(builds: list[dict]) -> list[int]:
    """The seeds some of whose jobs ran on one build and some on another: their arms' comparisons cross builds."""
    seen = [seed for build in builds for seed in build["seeds"]]
    return sorted({seed for seed in seen if seen.count(seed) > 1})


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


def cell(text: str) -> str:
    """Text (a model's response, say) as one cell of a Markdown table: the characters Markdown reads as markup
    backslash-escaped, so nothing in it renders as formatting, a link or HTML or ends the cell; each line break shown
    as ⏎, an empty text as *(empty)*."""
    escaped = re.sub(r"([\\`*_\[\]<>|~&])", r"\\\1", text)
    return " ⏎ ".join(escaped.splitlines()) if escaped.strip() else "*(empty)*"


FORMATS = {"pct": pct, "signed": signed, "interval": interval, "mean": mean, "find": find, "round": round, "cell": cell}
