"""`salsa report`: the evaluation as a Markdown file, a static HTML page, PNG plots and summary.json.

The report is a list of blocks (headings, paragraphs, tables, images) rendered twice, to Markdown and to
HTML, so the two always say the same thing. The verdict is computed, never written by hand: SALSA beat
PPO only if the lower end of the win rate's interval lies above 50%.
"""

from __future__ import annotations

import html
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from salsa import runtime
from salsa.config import ReportConfig
from salsa.engine import Stage
from salsa.io import atomic_file, atomic_write_json, atomic_write_text, read_json

SPLIT_TITLES = {"in_distribution": "in-distribution", "out_of_distribution": "out-of-distribution"}
JUDGE_TITLES = {"gold": "gold judge", "reward": "reward model", "llm": "LLM judge"}


@dataclass
class Block:
    kind: str  # heading | text | table | image | code
    content: object


def verdict(comparison: dict, confidence: float) -> str:
    """One plain sentence: did A beat B, with the interval that decides it."""
    a, b = comparison["a"], comparison["b"]
    low, high = comparison["ci"]["win_rate"]
    rate = comparison["win_rate"]
    where = f"{SPLIT_TITLES[comparison['split']]} prompts, {JUDGE_TITLES[comparison['judge']]}"
    if comparison.get("matched_kl"):
        where += ", at matched KL"
    interval = f"win rate {rate:.1%}, {confidence:.0%} CI [{low:.1%}, {high:.1%}], n = {comparison['n']}"
    if low > 0.5:
        return f"{a} beat {b} on this run ({where}: {interval})."
    if high < 0.5:
        return f"{a} did not beat {b}: {b} won on this run ({where}: {interval})."
    return f"{a} did not beat {b} on this run: the interval includes 50% ({where}: {interval})."


def _headline(results: dict) -> dict | None:
    """The comparison named in results['headline'] (first pair, in-distribution, first judge)."""
    wanted = results.get("headline")
    for c in results["comparisons"]:
        if wanted and all(c[k] == wanted[k] for k in ("a", "b", "split", "judge")):
            return c
    return results["comparisons"][0] if results["comparisons"] else None


def _rate(c: dict) -> str:
    low, high = c["ci"]["win_rate"]
    return f"win rate {c['win_rate']:.1%} [{low:.1%}, {high:.1%}]"


def _kl_label(results: dict) -> str:
    """Which KL the training curves show: on training prompts, at the training temperature."""
    temperature = results["settings"].get("training_temperature")
    return "training rollouts" + (f", temperature {temperature}" if temperature is not None else "")


def _matched_kl_blocks(results: dict, confidence: float) -> list[Block]:
    """The frontier read at matched KL and the saved policies compared there, or plainly why there are none."""
    blocks = []
    matched = results.get("matched_kl")
    if matched and matched["kl_sft"] is not None:
        parts = [
            f"{name}: " + ", ".join(f"{judge} {value:+.3f}" for judge, value in scores.items())
            for name, scores in matched["scores"].items()
        ]
        blocks.append(
            Block(
                "text",
                f"**At matched KL ({_kl_label(results)}).** At {matched['kl_sft']:.2f} nats from the SFT model (the "
                f"largest KL every run reached, inside every run's measured range), the training-rollout scores "
                f"were: {'; '.join(parts)}. A higher final score with a larger KL is bought with distance from the "
                "SFT model; compare at matched KL.",
            )
        )
    elif matched:
        ranges = "; ".join(f"{name} {low:.2f} to {high:.2f}" for name, (low, high) in matched["ranges"].items())
        blocks.append(
            Block(
                "text",
                f"**No comparison at matched KL.** The runs' KL ranges to the SFT model do not overlap "
                f"({_kl_label(results)}: {ranges} nats), so no point of one run's curve lies at a KL the other run "
                "reached, and reading a curve beyond its range would be a guess. A run that starts from a soup starts "
                "away from the SFT "
                "model; longer or smaller-KL-coefficient runs of the baseline would be needed to reach its range.",
            )
        )
    for entry in results.get("matched_kl_comparisons", []):
        blocks.append(Block("text", _matched_kl_text(entry, confidence)))
    for note in results.get("matched_kl_notes", []):
        blocks.append(Block("text", f"**Saved policies at matched KL.** {note}."))
    return blocks


def _matched_kl_text(entry: dict, confidence: float) -> str:
    """Which saved policies were compared at matched KL, their KL on the eval prompts, and the verdicts."""
    several_seeds = len({r["seed_index"] for r in entry["runs"]}) > 1
    picked = "; ".join(
        f"{r['policy']}" + (f" seed {r['seed_index']}" if several_seeds else "")
        + f" at step {r['step']} (training KL {r['kl_train']:.2f})"
        for r in entry["runs"]
    )  # fmt: skip
    measured = ", ".join(f"{name} {_with_ci(kl, '{:.2f}')}" for name, kl in entry["kl_sft"].items())
    text = (
        f"**Win rate at matched KL.** From each run's saved policies, the one whose training KL to the SFT model "
        f"lies closest to the largest KL both runs reached: {picked}."
    )
    if measured:
        text += f" Their KL to SFT on the evaluation prompts (nats): {measured}."
    return text + " " + " ".join(verdict(c, confidence) for c in entry["comparisons"])


def _samples_per_prompt(settings: dict) -> str:
    count = settings.get("samples_per_prompt", 1)
    return "One sample per prompt" if count == 1 else f"{count} samples per prompt (each with its own seed)"


def _llm_judge_text(judge: dict) -> str:
    """How the LLM judge judged: consistency over the two orders, position bias, agreement with gold."""
    template = "the built-in template" if judge["template"] == "built-in" else f"the template {judge['template']}"
    text = (
        f"**LLM judge.** {judge['model']} with {template}, each pair shown in both orders; a verdict counts only when "
        f"both orders agree, otherwise it is a tie (its mean A - B is the win rate minus the loss rate). "
        f"Of {judge['pairs']} pairs, {judge['identical_pairs']} had identical responses (ties without asking)."
    )
    if judge["consistent"] is not None:
        text += (
            f" On the others it gave the same verdict in both orders {_pct(judge['consistent'])} of the time, and "
            f"preferred the response shown first in {_pct(judge['first_shown_preferred'])} of its answers (50%: no "
            "position bias)."
        )
    gold = judge.get("gold")
    if gold:
        text += f" Against the gold judge on the same pairs it agreed on {_pct(gold['agreement'])} (win, tie, loss)"
        if gold["decisive_agreement"] is not None:
            text += (
                f"; on the {gold['decisive_pairs']} pairs where both picked a side, on "
                f"{_pct(gold['decisive_agreement'])} (50%: chance)"
            )
        text += ". Read its win rates with that agreement in mind."
    return text


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _with_ci(entry: dict, fmt: str = "{:+.3f}") -> str:
    low, high = entry["ci"]
    return f"{fmt.format(entry['mean'])} [{fmt.format(low)}, {fmt.format(high)}]"


def _policy_table(results: dict) -> list[list[str]]:
    splits = list(results["settings"]["prompts"])
    judges = results["judges"]
    header = ["policy"]
    header += [f"{judge} ({SPLIT_TITLES[split]})" for judge in judges for split in splits]
    temperature = results["settings"]["temperature"]
    header += [f"KL to {ref} (nats, evaluation prompts, T {temperature})" for ref in ("SFT", "soup")]
    header += ["length (tokens)"]
    rows = [header]
    for name, entry in results["policies"].items():
        row = [name]
        row += [_with_ci(entry["splits"][split][judge]) for judge in judges for split in splits]
        row += [_with_ci(entry[k], "{:.2f}") if k in entry else "-" for k in ("kl_sft", "kl_soup")]
        row.append(f"{entry['splits'][splits[0]]['length']['mean']:.1f}")
        rows.append(row)
    return rows


def _all_comparisons(results: dict) -> list[dict]:
    """The final policies' comparisons, then those at matched KL."""
    matched = [c for entry in results.get("matched_kl_comparisons", []) for c in entry["comparisons"]]
    return results["comparisons"] + matched


def _pair_label(c: dict) -> str:
    return f"{c['a']} vs {c['b']}" + (" (matched KL)" if c.get("matched_kl") else "")


def _comparison_table(results: dict) -> list[list[str]]:
    rows = [["A vs B", "prompts", "judge", "win", "tie", "loss", "win rate [CI]", "mean A - B [CI]", "n"]]
    for c in _all_comparisons(results):
        low, high = c["ci"]["win_rate"]
        difference = {"mean": c["mean_difference"], "ci": c["ci"]["mean_difference"]}
        rows.append([
            _pair_label(c), SPLIT_TITLES[c["split"]], JUDGE_TITLES[c["judge"]],
            _pct(c["win"]), _pct(c["tie"]), _pct(c["loss"]), f"{_pct(c['win_rate'])} [{_pct(low)}, {_pct(high)}]",
            _with_ci(difference), str(c["n"]),
        ])  # fmt: skip
    return rows


# --- Plots ---------------------------------------------------------------------------------------------------


def _panels(count: int, width: float, height: float):
    """A row of `count` axes."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return fig, axes[0]


def _save(fig, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def _plot_win_rates(results: dict, path: Path) -> None:
    comparisons = _all_comparisons(results)
    labels = [f"{_pair_label(c)}\n{SPLIT_TITLES[c['split']]}, {JUDGE_TITLES[c['judge']]}" for c in comparisons]
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
        for name, curve in curves.items():
            ax.plot(curve["kl_sft"], curve[judge], marker=".", label=name)
        if matched and matched["kl_sft"] is not None:
            ax.axvline(matched["kl_sft"], color="grey", linestyle="--", linewidth=1, label="matched KL")
        ax.set_xlabel(f"KL to the SFT model (nats per response; {_kl_label(results)})")
        ax.set_ylabel(f"{JUDGE_TITLES[judge]} score (training rollouts)")
        ax.legend(fontsize=8)
    _save(fig, path, "Score against KL, policy after each update (centred mean of 3)")


def _plot_training(results: dict, path: Path) -> None:
    curves = results["frontier"]
    keys = [k for k in ("gold", "reward", "kl_sft", "response_length") if all(k in c for c in curves.values())]
    units = {
        "gold": "gold score",
        "reward": "reward-model score",
        "kl_sft": "KL to SFT (nats)",
        "response_length": "response length (tokens)",
    }
    import matplotlib.pyplot as plt

    rows = (len(keys) + 1) // 2  # two panels a row, so that each stays readable at the page's width
    fig, grid = plt.subplots(rows, 2, figsize=(10, 3.8 * rows), squeeze=False)
    for ax, key in zip(grid.flat, keys, strict=False):
        for name, curve in curves.items():
            ax.plot(curve["step"], curve[key], label=name)
        if key == "kl_sft":
            ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("updates of the policy")
        ax.set_ylabel(units[key])
        ax.legend(fontsize=8)
    for ax in list(grid.flat)[len(keys) :]:
        ax.axis("off")
    _save(fig, path, "Training curves (centred mean of 3 policies, mean over seeds)")


# --- Rendering -----------------------------------------------------------------------------------------------


def _markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if block.kind == "heading":
            level, text = block.content
            parts.append("#" * level + " " + text)
        elif block.kind == "text":
            parts.append(str(block.content))
        elif block.kind == "table":
            rows = block.content
            lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
            parts.append("\n".join(lines))
        elif block.kind == "image":
            file, alt = block.content
            parts.append(f"![{alt}]({file})")
        elif block.kind == "code":
            parts.append("```\n" + str(block.content).rstrip() + "\n```")
    return "\n\n".join(parts) + "\n"


def _html(blocks: list[Block], title: str) -> str:
    body = []
    for block in blocks:
        if block.kind == "heading":
            level, text = block.content
            body.append(f"<h{level}>{html.escape(text)}</h{level}>")
        elif block.kind == "text":
            text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(str(block.content)))
            body.append(f"<p>{text}</p>")
        elif block.kind == "table":
            rows = block.content
            head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif block.kind == "image":
            file, alt = block.content
            body.append(f'<figure><img src="{html.escape(file)}" alt="{html.escape(alt)}"></figure>')
        elif block.kind == "code":
            body.append(f"<pre>{html.escape(str(block.content))}</pre>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:0.85em}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def versions() -> dict[str, str]:
    import torch
    import transformers

    from salsa import __version__

    return {
        "salsa": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def write_report(eval_dir: str | Path, out: str | Path | None = None, run_info: dict | None = None) -> Path:
    """Render `eval_dir/results.json` (and the run's config and timings, if given) into `out`.

    A report is always rendered afresh; it replaces only an earlier report (never the evaluation or other files).
    """
    config = ReportConfig(eval_dir=str(eval_dir), output_dir=None if out is None else str(out))
    out = Path(out) if out is not None else Path(eval_dir).parent / "report"
    with Stage(config, out, overwrite=True) as stage:
        if runtime.is_main_process():
            _render(stage.inputs["eval_dir"], stage.out, run_info)
        stage.finish()
    return out


def _render(results: dict, out: Path, run_info: dict | None) -> None:
    confidence = results["settings"]["confidence"]
    headline = _headline(results)
    title = "salsa report"
    blocks = [Block("heading", (1, title))]
    headline_verdict = verdict(headline, confidence) if headline else None
    if headline:
        blocks.append(Block("text", "**Verdict** (the pre-specified comparison). " + headline_verdict))
        secondary = [c for c in results["comparisons"] if c is not headline]
        if secondary:
            listed = "; ".join(
                f"{_pair_label(c)}, {SPLIT_TITLES[c['split']]}, {JUDGE_TITLES[c['judge']]}: {_rate(c)}"
                for c in secondary
            )
            blocks.append(
                Block(
                    "text",
                    f"Secondary comparisons (each with its own {confidence:.0%} interval, not adjusted for multiple "
                    f"comparisons; they describe, the verdict above decides): {listed}.",
                )
            )
    blocks += _matched_kl_blocks(results, confidence)
    plots = []
    if results["comparisons"]:
        plots.append(("win_rates.png", "Pairwise win rates with confidence intervals", _plot_win_rates))
    if results["landscape"]:
        plots.append(("landscape.png", "Reward landscape between SFT-1 and SFT-2", _plot_landscape))
    if results["frontier"]:
        plots.append(("frontier.png", "Reward against KL to the SFT model", _plot_frontier))
        plots.append(("training.png", "Training curves", _plot_training))
    if plots:
        blocks.append(Block("heading", (2, "Plots")))
        blocks += [Block("image", (file, alt)) for file, alt, _ in plots]
    if results["frontier"]:
        blocks.append(
            Block(
                "text",
                f"Training KL ({_kl_label(results)}) is the k1 estimate, the sum of log pi - log pi_SFT over a "
                "response, averaged over a step's responses: unbiased but noisy, so near the start, where the true KL "
                "is near 0, a step's average can fall below 0. Evaluation KL (the policy table) is measured on the "
                f"held-out prompts at temperature {results['settings']['temperature']}; the two are not comparable.",
            )
        )
    settings = results["settings"]
    policy_table, comparison_table = _policy_table(results), _comparison_table(results)
    blocks += [
        Block("heading", (2, "Policies")),
        Block(
            "text",
            f"{_samples_per_prompt(settings)} at temperature {settings['temperature']}, at most "
            f"{settings['max_new_tokens']} new "
            f"tokens, the same seed for every policy; prompts: "
            + ", ".join(f"{n} {SPLIT_TITLES[s]}" for s, n in settings["prompts"].items())
            + f". Means with {confidence:.0%} bootstrap intervals; KL on in-distribution prompts, nats per response.",
        ),
        Block("table", policy_table),
        Block("heading", (2, "Win rates")),
        Block(
            "text",
            f"Prompt by prompt: A wins if its score exceeds B's by more than {settings['tie_margin']}. Intervals: "
            f"percentile bootstrap over prompts (and seeds), {settings['bootstrap_samples']} resamples.",
        ),
        Block("table", comparison_table),
    ]
    if results.get("llm_judge"):
        blocks.append(Block("text", _llm_judge_text(results["llm_judge"])))
    if run_info:
        if run_info.get("timings"):
            rows = [["stage", "seconds"]] + [[k, f"{v:.0f}"] for k, v in run_info["timings"].items()]
            blocks += [Block("heading", (2, "Timings")), Block("table", rows)]
        if run_info.get("config"):
            blocks += [Block("heading", (2, "Resolved config")), Block("code", run_info["config"])]
    environment = versions()
    blocks += [
        Block("heading", (2, "Versions")),
        Block("table", [["package", "version"]] + [[k, v] for k, v in environment.items()]),
    ]

    import matplotlib

    matplotlib.use("Agg")
    for file, _, plot in plots:
        with atomic_file(out / file) as tmp:
            plot(results, tmp)
    atomic_write_text(out / "report.md", _markdown(blocks))
    atomic_write_text(out / "report.html", _html(blocks, title))
    summary = {
        "verdict": headline_verdict,
        "headline": headline,
        "policies": results["policies"],
        "comparisons": results["comparisons"],
        "matched_kl": results.get("matched_kl"),
        "matched_kl_comparisons": results.get("matched_kl_comparisons", []),
        "table": policy_table,
        "win_rates": comparison_table,
        "timings": (run_info or {}).get("timings"),
        "versions": environment,
    }
    atomic_write_json(out / "summary.json", summary)


def print_summary(out: str | Path) -> None:
    """The verdict and the result tables of a written report, on the terminal."""
    from rich.markup import escape
    from rich.table import Table

    from salsa.progress import console

    if not runtime.is_main_process():
        return
    summary = read_json(Path(out) / "summary.json")
    for rows in (summary["table"], summary["win_rates"]):
        table = Table(*rows[0])
        for row in rows[1:]:
            table.add_row(*row)
        console.print(table)
    if summary["verdict"]:
        console.print(f"[bold]verdict:[/] {escape(summary['verdict'])}")
    console.print(f"report: {Path(out) / 'report.html'} ({Path(out) / 'report.md'})")
