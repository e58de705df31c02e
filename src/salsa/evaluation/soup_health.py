"""Is the soup a soup? Its ingredients' distance from each other and from the soup, and the soup against each.

SALSA's premise is a soup that sits somewhere its ingredients do not. Two fine-tunes that barely differ make a
soup that is one of them, and then swapping the KL reference changes almost nothing: the report says so before
anyone reads the RL results. On the in-distribution prompts, with the evaluation's seeds:

    KL(A || B) for every ordered pair of {ingredients, soup}, on A's own samples (nats per response)
    the soup against each ingredient, prompt by prompt, by every judge (win rate and mean difference)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salsa.config import EvalConfig
from salsa.evaluation.stats import compare, mean_with_interval
from salsa.evaluation.summary import cluster_task, clustered_stats
from salsa.io import read_json


def ingredients_of(soup_dir: str) -> list[str] | None:
    """The ingredient directories a `salsa soup` directory records (soup.json), if all of them still exist."""
    record = Path(soup_dir) / "soup.json"
    if not record.is_file():
        return None
    paths = [entry["path"] for entry in read_json(record).get("ingredients", [])]
    if len(paths) < 2 or any("+" in p or not Path(p).is_dir() for p in paths):  # LoRA ingredients: BASE+ADAPTER
        return None
    return paths


def member_names(count: int) -> list[str]:
    return [f"ingredient-{i}" for i in range(count)] + ["soup"]


def summarise_soup_health(rows: list[dict], judges: list[str], config: EvalConfig, stats: dict) -> dict:
    """KL between every pair of members, the soup against each ingredient, and whether the ingredients differ."""
    names = list(dict.fromkeys(r["member"] for r in rows))
    stats = clustered_stats(stats, rows, cluster_task(config, "in_distribution"))  # draws subjects, not prompts

    def matrix(member: str, key: str) -> np.ndarray:
        grouped: dict[int, list[float]] = {}
        for r in rows:
            if r["member"] == member:
                grouped.setdefault(r["index"], []).append(r[key])
        return np.array([grouped[i] for i in sorted(grouped)], dtype=float)  # [prompts, samples]

    kl = {
        f"{a}||{b}": mean_with_interval(matrix(a, f"kl_{b}").mean(1)[None], **stats)
        for a in names
        for b in names
        if a != b
    }
    comparisons = [
        {"a": "soup", "b": ingredient, "judge": judge,
         **compare(matrix("soup", judge).mean(1)[None], matrix(ingredient, judge).mean(1)[None], config.tie_margin,
                   **stats)}
        for ingredient in names if ingredient != "soup" for judge in judges
    ]  # fmt: skip
    between = [kl[f"{a}||{b}"]["mean"] for a in names for b in names if a != b and "soup" not in (a, b)]
    closest = min(between)
    return {
        "members": names,
        "kl": kl,
        "comparisons": comparisons,
        "closest_ingredients_kl": closest,
        "threshold": config.soup_health_kl,
        "distinct": closest >= config.soup_health_kl,
    }


def soup_health_text(health: dict) -> str:
    """The report's sentence under its soup-health tables: how far apart the ingredients are, and what that means for
    the comparison."""
    if health["distinct"]:
        return (
            f"The closest two ingredients are {health['closest_ingredients_kl']:.2f} nats apart (at least the "
            f"{health['threshold']} that counts as distinct here): the soup is a model of its own."
        )
    return (
        f"**The ingredients are only {health['closest_ingredients_kl']:.2f} nats apart** (less than "
        f"{health['threshold']}): the soup is effectively one of them, so a soup reference can change little; read "
        "any SALSA-against-PPO difference with that in mind."
    )
