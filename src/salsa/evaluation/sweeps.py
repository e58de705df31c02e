"""Merge sweeps in the results: every point as a policy, every sweep as a curve of points, and what the report says.

A point answered the evaluation prompts as the policies did, so it has a policy's entry (mean scores and KL to the
SFT model, with intervals) and joins the policies' table. A sweep's `line` runs through its points in order of value
and through the evaluated policies at its ends (expo starts at B, alpha 0; liti and slerp run from A, at 0, to B, at
1): the curve the report draws against KL to SFT, for the reader to pick a point on.
"""

from __future__ import annotations

from salsa.config import EvalConfig
from salsa.evaluation.summary import policy_means
from salsa.sweep_spec import SweepPoint

METHOD_WORDS = {"expo": "ExPO, B + alpha (B - A)", "liti": "LITI, (1 - eta) A + eta B", "slerp": "SLERP from A to B"}


def summarise_sweeps(
    config: EvalConfig, points: list[SweepPoint], rows: list[dict], judges: list[str], splits: list[str], stats: dict
) -> tuple[dict, dict]:
    """(each point's entry for the policies' table: its means and its merge; each sweep: method, models, values,
    points, line and the prompts it was measured on)."""
    entries = {
        point.name: {
            "merge": {"method": point.method, "value": point.value, "models": [list(pair) for pair in point.models]},
            **policy_means(rows, point.name, judges, splits, stats, config),
        }
        for point in points
    }
    sweeps = {}
    for name, sweep in config.sweeps.items():
        mine = sorted((point for point in points if point.sweep == name), key=lambda point: point.value)
        a, b = sweep["models"]
        before, after = ([b], []) if sweep["method"] == "expo" else ([a], [b])
        line = [n for n in before if n in config.policies] + [p.name for p in mine]
        line += [n for n in after if n in config.policies]
        sweeps[name] = {"method": sweep["method"], "models": [a, b], "values": [p.value for p in mine],
                        "points": [p.name for p in mine], "line": line, "prompts": config.prompts}  # fmt: skip
    return entries, sweeps


def sweeps_text(results: dict) -> str:
    """The report's paragraph: what was merged, where it was measured, and why a point is chosen on a dev split."""
    sweeps = results["sweeps"]
    merged = "; ".join(
        f"{name}: {METHOD_WORDS[s['method']]} with A = {s['models'][0]}, B = {s['models'][1]}, at "
        + ", ".join(f"{value:g}" for value in s["values"])
        for name, s in sweeps.items()
    )
    prompts = next(iter(sweeps.values()))["prompts"]
    count = results["settings"]["prompts"]["in_distribution"]
    return (
        f"**Merges of the policies** ({merged}). Each point was built in memory and evaluated as a policy is (the "
        "same prompts and seeds; its scores and KL in the policies' table, its place in the plot of score against KL "
        f"to SFT). They were measured on {prompts} ({count} in-distribution prompts): choosing the point that scores "
        "best on these prompts selects on them, so its score here overstates what it will score on new prompts. "
        "Choose a point on a dev split (eval.prompts set to the prompts_dev.jsonl that `salsa data make` writes), then "
        "evaluate that one merge on the test prompts and report that score."
    )
