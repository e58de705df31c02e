"""The report's plots (PNG, matplotlib), and the names of splits and judges that the plots and the text share.

Each plot is a function of results.json alone; `plots_for` lists those that the results have data for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt

SPLIT_TITLES = {
    "in_distribution": "in-distribution",
    "out_of_distribution": "out-of-distribution",
    "in_distribution_turn_2": "in-distribution second-turn",  # MT-Bench's follow-ups (eval.mt_bench_turns 2)
    "out_of_distribution_turn_2": "out-of-distribution second-turn",
}
JUDGE_TITLES = {"gold": "gold judge", "reward": "reward model", "llm": "LLM judge"}


def kl_label(results: dict) -> str:
    """Which KL the training curves show: on training prompts, at the training temperature."""
    temperature = results["settings"].get("training_temperature")
    return "training rollouts" + (f", temperature {temperature}" if temperature is not None else "")


def all_comparisons(results: dict) -> list[dict]:
    """The final policies' comparisons, then those at matched KL."""
    matched = [c for entry in results.get("matched_kl_comparisons", []) for c in entry["comparisons"]]
    return results["comparisons"] + matched


def pair_label(c: dict) -> str:
    return f"{c['a']} vs {c['b']}" + (" (matched KL)" if c.get("matched_kl") else "")


def _panels(count: int, width: float, height: float):
    """A row of `count` axes."""
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return fig, axes[0]


def _save(fig, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def _plot_win_rates(results: dict, path: Path) -> None:
    comparisons = all_comparisons(results)
    labels = [f"{pair_label(c)}\n{SPLIT_TITLES[c['split']]}, {JUDGE_TITLES[c['judge']]}" for c in comparisons]
    rates = [100 * c["win_rate"] for c in comparisons]
    errors = [
        [100 * (c["win_rate"] - c["ci"]["win_rate"][0]) for c in comparisons],
        [100 * (c["ci"]["win_rate"][1] - c["win_rate"]) for c in comparisons],
    ]
    fig, (ax,) = _panels(1, 8, 0.55 * len(comparisons) + 1.5)
    y = range(len(comparisons))
    ax.barh(y, rates, xerr=errors, color="tab:blue", alpha=0.8, capsize=4, label="win rate (ties count half)")
    ax.axvline(50, color="black", linestyle="--", linewidth=1, label="50%: no difference")
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"win rate of A against B (%), {results['settings']['confidence']:.0%} bootstrap CI")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path, "Pairwise win rates")


def _plot_landscape(results: dict, path: Path) -> None:
    points = results["landscape"]
    alphas = [p["alpha"] for p in points]
    judges = results["judges"]
    fig, axes = _panels(len(judges), 5, 4)
    for ax, judge in zip(axes, judges, strict=True):
        means = [p[judge]["mean"] for p in points]
        low = [p[judge]["ci"][0] for p in points]
        high = [p[judge]["ci"][1] for p in points]
        ax.plot(alphas, means, marker="o", color="tab:green", label=f"mean {JUDGE_TITLES[judge]} score")
        ax.fill_between(
            alphas, low, high, color="tab:green", alpha=0.2, label="interval (resampling each prompt's samples)"
        )
        midpoint = "soup" if results.get("landscape_midpoint_is_soup") else "midpoint"
        for alpha, name in ((0.0, "SFT-1"), (0.5, midpoint), (1.0, "SFT-2")):
            ax.axvline(alpha, color="grey", linestyle=":", linewidth=1)
            ax.annotate(name, (alpha, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8)
        ax.set_xlabel("alpha: model = (1 - alpha) * SFT-1 + alpha * SFT-2")
        ax.set_ylabel(f"{JUDGE_TITLES[judge]} score (in-distribution)")
        ax.legend(fontsize=8)
    _save(fig, path, "Reward landscape between two SFT models")


def _plot_frontier(results: dict, path: Path) -> None:
    curves = results["frontier"]
    judges = [j for j in results["judges"] if all(j in c for c in curves.values())]
    fig, axes = _panels(len(judges), 5, 4)
    matched = results.get("matched_kl")
    for ax, judge in zip(axes, judges, strict=True):
        for color, (name, curve) in enumerate(curves.items()):
            ax.plot(curve["kl_sft"], curve[judge], marker=".", color=f"C{color}", label=name)
            over = (results.get("over_optimisation") or {}).get(name)
            if judge == "gold" and over and over["began"]:
                ax.plot(over["kl_sft"], over["gold_peak"], "x", color=f"C{color}", markersize=10, markeredgewidth=2,
                        label=f"{name}: gold peaks, over-optimisation begins")  # fmt: skip
        if matched and matched["kl_sft"] is not None:
            ax.axvline(matched["kl_sft"], color="grey", linestyle="--", linewidth=1, label="matched KL")
        ax.set_xlabel(f"KL to the SFT model (nats per response)\n{kl_label(results)}")
        ax.set_ylabel(f"{JUDGE_TITLES[judge]} score (training rollouts)")
        ax.legend(fontsize=8)
    _save(fig, path, "Score against KL, policy after each update (centred mean of 3)")


def _at_kl(entry: dict, judge: str) -> tuple[float, float]:
    """(KL to SFT, in-distribution score by `judge`) of a policy's entry in the results."""
    return entry["kl_sft"]["mean"], entry["splits"]["in_distribution"][judge]["mean"]


def _mark_at_kl(ax, entry: dict, judge: str, label: str, **style) -> None:
    """A policy (or merged point) at its KL to SFT and score, with both intervals as error bars, and its label."""
    kl, score = entry["kl_sft"], entry["splits"]["in_distribution"][judge]
    (x, y), reach = _at_kl(entry, judge), lambda m: [[m["mean"] - m["ci"][0]], [m["ci"][1] - m["mean"]]]
    ax.errorbar(x, y, xerr=reach(kl), yerr=reach(score), capsize=2, linewidth=0.8, **style)
    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


def _plot_merges(results: dict, path: Path) -> None:
    policies, sweeps = results["policies"], results["sweeps"]
    points = {name for sweep in sweeps.values() for name in sweep["points"]}
    fig, axes = _panels(len(results["judges"]), 5.5, 4.5)
    for ax, judge in zip(axes, results["judges"], strict=True):
        for color, (name, sweep) in enumerate(sweeps.items()):
            line = [_at_kl(policies[n], judge) for n in sweep["line"]]
            ax.plot(*zip(*line, strict=True), "-", color=f"C{color}", alpha=0.6, label=f"{name} ({sweep['method']})")
            for point, value in zip(sweep["points"], sweep["values"], strict=True):
                _mark_at_kl(ax, policies[point], judge, f"{value:g}", fmt="o", color=f"C{color}", markersize=4)
        for name in (n for n in policies if n not in points):
            _mark_at_kl(ax, policies[name], judge, name, fmt="s", color="black", markersize=5)
        ax.set_xlabel("KL to the SFT model (nats per response, evaluation prompts)")
        ax.set_ylabel(f"{JUDGE_TITLES[judge]} score (in-distribution)")
        ax.legend(fontsize=7)
    _save(fig, path, "Merged policies against KL to SFT")


# The training figure's panels: (y label, results section, keys drawn, x axis). "frontier" curves are indexed by the
# policy after s updates (0 = the start), "diagnostics" by the update.
TRAINING_PANELS = (
    ("gold score", "frontier", ("gold",)),
    ("reward-model score (training reward)", "frontier", ("reward",)),
    ("KL to SFT (nats)", "frontier", ("kl_sft",)),
    ("response length (tokens)", "frontier", ("response_length",)),
    ("critic: explained variance", "diagnostics", ("explained_variance",)),
    ("critic: value loss", "diagnostics", ("value_loss",)),
    ("advantage, first / last quarter of a response", "diagnostics", ("advantage_q1", "advantage_q4")),
    ("clip fraction", "diagnostics", ("clip_fraction",)),
    ("approx. KL(old || new) per update", "diagnostics", ("approx_kl",)),
    ("gradient norm, policy / value", "diagnostics", ("grad_norm_policy", "grad_norm_value")),
    ("entropy (nats per token)", "diagnostics", ("entropy",)),
)
STYLES = ("-", "--", ":")
# The ratio's panels are 0 by construction with one gradient step per rollout; drawn only when some update moved them.
RATIO_PANELS = ("clip_fraction", "approx_kl")


def _logged(results: dict, section: str, keys: tuple[str, ...]) -> list[str]:
    """The keys of a panel that every run logged."""
    curves = results.get(section) or {}
    return [k for k in keys if curves and all(k in c for c in curves.values())]


def flat_ratio_panels(results: dict) -> dict[str, str]:
    """The ratio's panels (clip fraction, approx. KL) that are 0 at every update of every run: key -> label."""
    return {
        keys[0]: label
        for label, section, keys in TRAINING_PANELS
        if keys[0] in RATIO_PANELS
        and _logged(results, section, keys)
        and all(v == 0 for curve in results[section].values() for v in curve[keys[0]])
    }


def flat_ratio_text(results: dict) -> str | None:
    """One line in place of the ratio's flat panels: that they are 0 throughout, and why."""
    flat = flat_ratio_panels(results)
    if not flat:
        return None
    why = (
        "one gradient step per rollout (rl.ppo_epochs 1, one minibatch): the policy that sampled is the one updated, "
        "so the ratio is 1 and nothing clips"
        if "approx_kl" in flat  # KL(old || new) is 0 only where the ratio is 1
        else "the ratio never left the clip range"
    )
    return f"Training curves not drawn: {' and '.join(flat.values())} were 0 at every update of every run ({why})."


def training_panels(results: dict) -> list[tuple[str, str, list[str]]]:
    """(label, section, keys drawn) of each panel of the training figure that can show something."""
    flat = flat_ratio_panels(results)
    logged = [(label, section, _logged(results, section, keys)) for label, section, keys in TRAINING_PANELS]
    return [(label, section, keys) for label, section, keys in logged if keys and keys[0] not in flat]


def _plot_training(results: dict, path: Path) -> None:
    panels = training_panels(results)
    rows = (len(panels) + 1) // 2  # two panels a row, so that each stays readable at the page's width
    fig, grid = plt.subplots(rows, 2, figsize=(10, 3.4 * rows), squeeze=False)
    for ax, (label, section, keys) in zip(grid.flat, panels, strict=False):
        for color, (name, curve) in enumerate(results[section].items()):
            for style, key in zip(STYLES, keys, strict=False):
                suffix = f" ({key.rsplit('_', 1)[-1]})" if len(keys) > 1 else ""
                ax.plot(curve["step"], curve[key], style, color=f"C{color}", label=name + suffix)
        if keys[0] in ("kl_sft", "explained_variance", "advantage_q1"):
            ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("updates of the policy" if section == "frontier" else "update")
        ax.set_ylabel(label, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(grid.flat)[len(panels) :]:
        ax.axis("off")
    _save(fig, path, "Training curves (scores: centred mean of 3 policies; all: mean over seeds)")


def plots_for(results: dict) -> list[tuple[str, str, Callable[[dict, Path], None]]]:
    """(file name, alt text, plot function) for each plot that the results have data for."""
    plots = []
    if results["comparisons"]:
        plots.append(("win_rates.png", "Pairwise win rates with confidence intervals", _plot_win_rates))
    if results["landscape"]:
        plots.append(("landscape.png", "Reward landscape between SFT-1 and SFT-2", _plot_landscape))
    if results["frontier"]:
        plots.append(("frontier.png", "Reward against KL to the SFT model", _plot_frontier))
        plots.append(("training.png", "Training curves", _plot_training))
    if results.get("sweeps") and all("kl_sft" in entry for entry in results["policies"].values()):
        plots.append(("merges.png", "Merged policies: score against KL to the SFT model", _plot_merges))
    return plots
