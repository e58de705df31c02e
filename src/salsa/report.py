"""`salsa report`: the evaluation as a Markdown file, a static HTML page, PNG plots and summary.json.

The report is a list of blocks (headings, paragraphs, notes, tables, images, example responses) rendered twice, to
Markdown and to HTML, so the two always say the same thing: a results page that opens with the results table and the
verdict. The verdict is computed, never written by hand: it is the rule's
(`evaluation.stats.VERDICT_RULE`, applied when the evaluation was summarised) on the pre-specified comparison, with
the win rate beside it as a description.
"""

from __future__ import annotations

import html
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import torch
import transformers
from rich import box
from rich.markup import escape
from rich.table import Table

from salsa import runtime
from salsa.config import ReportConfig
from salsa.data import prompt_text
from salsa.engine import Stage
from salsa.evaluation.soup_health import soup_health_text
from salsa.evaluation.stats import VERDICT_RULE
from salsa.evaluation.sweeps import sweeps_text
from salsa.io import atomic_file, atomic_write_json, atomic_write_text, read_json, read_jsonl
from salsa.plots import JUDGE_TITLES, SPLIT_TITLES, all_comparisons, flat_ratio_text, kl_label, pair_label, plots_for
from salsa.progress import console
from salsa.version import __version__


@dataclass
class Block:
    kind: str  # heading | text | notes | table | image | code | example
    content: object


def verdict(comparison: dict, confidence: float) -> str:
    """One plain sentence: the verdict by the rule (VERDICT_RULE) on "A beats B" and what decided it, with the win
    rate beside it as a description (it decides nothing)."""
    a, b = comparison["a"], comparison["b"]
    low, high = comparison["ci"]["win_rate"]
    where = f"{SPLIT_TITLES[comparison['split']]} prompts, {JUDGE_TITLES[comparison['judge']]}"
    if comparison.get("matched_kl"):
        where += ", at matched KL"
    rate = f"win rate {comparison['win_rate']:.1%}, {confidence:.0%} CI [{low:.1%}, {high:.1%}], n = {comparison['n']}"
    return (
        f"{a} beats {b} ({where}): **{comparison['claim']}** by the rule fixed in advance: "
        f"{comparison['claim_reason']}. As a description: {rate}."
    )


def seed_test_text(comparison: dict) -> str:
    """The comparison over seeds: per-seed differences, the two tests, the minimum detectable effect, the rule."""
    test = comparison["seed_test"]
    per_seed = ", ".join(f"{d:+.3f}" for d in test["per_seed"])
    rule = f"The rule, fixed before the run: {VERDICT_RULE}."
    if test["t_p"] is None:
        why = "one seed" if test["seeds"] == 1 else "identical differences"
        return f"Over seeds: per-seed mean differences {per_seed}; no test ({why}). {rule}"
    return (
        f"Over the {test['seeds']} seeds: per-seed mean {JUDGE_TITLES[comparison['judge']]} differences {per_seed} "
        f"(mean {test['mean']:+.3f}); paired t-test p = {test['t_p']:.3f}; exact sign-flip test p = "
        f"{test['permutation_p']:.3f} (the smallest possible with {test['seeds']} seeds is "
        f"{test['min_permutation_p']:.3f}); minimum detectable effect (5% level, 80% power, noncentral t) "
        f"{test['mde']:.3f}. {rule}"
    )


def factorial_text(entry: dict, judge: str) -> str:
    """The 2 x 2 of init and reference at one KL coefficient, in one sentence per effect: the estimate, its bootstrap
    interval, the minimum detectable effect, and the label from the Holm-corrected test over seeds."""
    effects = entry["effects"][judge]
    parts = []
    for factor, words in (("init", "starting from the soup"), ("reference", "anchoring to the soup"),
                          ("interaction", "both together beyond the sum (interaction)")):  # fmt: skip
        effect = effects[factor]
        low, high = effect["ci"]
        mde = "no MDE" if effect["mde"] is None else f"MDE {effect['mde']:.3f}"
        parts.append(
            f"{words}: {effect['mean']:+.3f} [{low:+.3f}, {high:+.3f}], {mde} ({effect['label']}: {effect['reason']})"
        )
    return (
        f"KL coefficient {entry['kl_coef']:g}, {JUDGE_TITLES[judge]}, in-distribution (each label from a "
        "pooled-variance t-test on per-seed means, Holm-corrected over the three; the interval is the bootstrap's): "
        + "; ".join(parts)
        + "."
    )


def against_sft(results: dict) -> list[str]:
    """Did RL help? Each policy against the SFT model on in-distribution prompts by the first judge (gold when the
    task has one), by its mean score difference and that difference's interval."""
    judge = results["judges"][0] if results["judges"] else None
    sentences = []
    for c in results["comparisons"]:
        if c["b"] != "sft" or c["split"] != "in_distribution" or c["judge"] != judge or c.get("matched_kl"):
            continue
        low, high = c["ci"]["mean_difference"]
        measured = (
            f"mean {JUDGE_TITLES[judge]} difference {c['mean_difference']:+.3f} [{low:+.3f}, {high:+.3f}], {_rate(c)}"
        )
        if low > 0:
            sentences.append(f"{c['a']} improved on the SFT model: {measured}.")
        elif high < 0:
            sentences.append(f"{c['a']} is worse than the SFT model: {measured}.")
        else:
            sentences.append(
                f"{c['a']} did not measurably improve on the SFT model (the interval includes 0): {measured}."
            )
    return sentences


def over_optimisation_text(results: dict) -> str | None:
    """Per RL policy trained on a reward model, where its rollouts' gold peaked and whether it then fell while the
    reward did not (results['over_optimisation']); None when no run has both scores."""
    found = results.get("over_optimisation") or {}
    sentences, drop = [], next((o["drop"] for o in found.values()), None)
    for name, o in found.items():
        peak = f"gold peaked at {o['gold_peak']:.3f} after update {o['step']} ({o['kl_sft']:.2f} nats from SFT)"
        if o["began"]:
            sentences.append(
                f"{name}: {peak} and ended at {o['gold_end']:.3f} while the reward went {o['reward_peak']:+.2f} -> "
                f"{o['reward_end']:+.2f}: over-optimisation began there."
            )
        else:
            sentences.append(f"{name}: {peak} and ended at {o['gold_end']:.3f}: no over-optimisation within the run.")
    if not sentences:
        return None
    return (
        "**Over-optimisation** (training rollouts, centred means of 3 steps; it begins where gold ends more than "
        f"{drop} below its peak while the reward-model score does not fall). " + " ".join(sentences)
    )


def headline_comparison(results: dict) -> dict | None:
    """The comparison named in results['headline'] (first pair, in-distribution, first judge)."""
    wanted = results.get("headline")
    for c in results["comparisons"]:
        if wanted and all(c[k] == wanted[k] for k in ("a", "b", "split", "judge")):
            return c
    return results["comparisons"][0] if results["comparisons"] else None


def _key(c: dict) -> tuple:
    return c["a"], c["b"], c["split"], c["judge"], bool(c.get("matched_kl"))


def results_comparisons(comparisons: list[dict], headline: dict | None) -> tuple[list[dict], list[dict]]:
    """The results table's comparisons: the headline pair on every split and judge (the pre-specified one first),
    then each policy against SFT, a pair's rows together; and the others (other pairs, those at matched KL)."""
    if headline is None:
        return [], comparisons
    pair = headline["a"], headline["b"]
    main = [c for c in comparisons if not c.get("matched_kl") and ((c["a"], c["b"]) == pair or c["b"] == "sft")]
    pairs = list(dict.fromkeys([pair] + [(c["a"], c["b"]) for c in main]))  # each pair's rows together
    main.sort(key=lambda c: (_key(c) != _key(headline), pairs.index((c["a"], c["b"]))))
    chosen = {_key(c) for c in main}
    return main, [c for c in comparisons if _key(c) not in chosen]


# The terminal's labels.
SHORT_SPLITS = {"in_distribution": "in", "out_of_distribution": "OOD", "in_distribution_turn_2": "in-2",
                "out_of_distribution_turn_2": "OOD-2"}  # fmt: skip


def _mark(number: int) -> str:
    """A footnote mark: 12 -> ¹²."""
    return str(number).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))


def comparison_rows(comparisons: list[dict], short: bool = False) -> tuple[list[list[str]], list[str]]:
    """One row per comparison (A vs B, prompts, judge, mean A - B [CI], win rate [CI], the rule's verdict with a
    footnote mark), and the footnotes: each distinct reason the rule gave, once. `short`: the terminal's labels."""
    reasons: list[str] = []
    rows = [["A vs B", "prompts", "judge", "mean A - B [CI]", "win rate [CI]", "verdict"]]
    for c in comparisons:
        if c["claim_reason"] not in reasons:
            reasons.append(c["claim_reason"])
        mark = _mark(reasons.index(c["claim_reason"]) + 1)
        rows.append([
            pair_label(c), SHORT_SPLITS[c["split"]] if short else SPLIT_TITLES[c["split"]],
            c["judge"] if short else JUDGE_TITLES[c["judge"]], _difference(c), _win_rate(c), f"{c['claim']}{mark}",
        ])  # fmt: skip
    return rows, [f"{_mark(i + 1)} {reason}" for i, reason in enumerate(reasons)]


def soup_health_tables(health: dict) -> tuple[list[list[str]], list[list[str]]]:
    """The KL between every two members (row: whose samples; nats per response) and the soup against each
    ingredient on every judge (mean difference and win rate, with intervals)."""
    members = health["members"]
    kl = [["KL(row || column)", *members]]
    for a in members:
        kl.append([a] + ["-" if a == b else _with_ci(health["kl"][f"{a}||{b}"], "{:.2f}") for b in members])
    versus = [["soup vs", "judge", "mean soup - ingredient [CI]", "win rate [CI]"]]
    for c in health["comparisons"]:
        versus.append([c["b"], JUDGE_TITLES[c["judge"]], _difference(c), _win_rate(c)])
    return kl, versus


EXAMPLES = 3


def example_responses(samples_file: Path, results: dict, count: int = EXAMPLES) -> list[dict]:
    """`count` in-distribution prompts spread evenly over those every policy answered, each with every policy's
    response to it with the same sampling seed (sample 0 of RL seed 0) and its scores; [] without samples.jsonl."""
    if not samples_file.is_file():
        return []
    policies = [name for name, entry in results["policies"].items() if "merge" not in entry]  # not sweep points
    rows = {
        (r["policy"], r["index"]): r
        for r in read_jsonl(samples_file)
        if r.get("policy") in policies and "snapshot" not in r and "sweep" not in r
        and (r["split"], r["seed_index"], r.get("sample", 0)) == ("in_distribution", 0, 0)
    }  # fmt: skip
    indices = sorted({i for _, i in rows if all((p, i) in rows for p in policies)})
    chosen = sorted({indices[(2 * k + 1) * len(indices) // (2 * count)] for k in range(count)}) if indices else []
    return [
        {
            "index": i,
            "prompts": results["settings"]["prompts"]["in_distribution"],
            "prompt": prompt_text(rows[(policies[0], i)]["prompt"]),  # a chat prompt's turns, one per line
            "responses": [
                (p, rows[(p, i)]["response"], {j: rows[(p, i)][j] for j in results["judges"] if j in rows[(p, i)]})
                for p in policies
            ],
        }
        for i in chosen
    ]


def _rate(c: dict) -> str:
    return f"win rate {_win_rate(c)}"


def _win_rate(c: dict) -> str:
    """A comparison's win rate and its interval: 52.1% [40.3%, 63.0%]."""
    low, high = c["ci"]["win_rate"]
    return f"{_pct(c['win_rate'])} [{_pct(low)}, {_pct(high)}]"


def _difference(c: dict) -> str:
    """A comparison's mean difference A - B and its interval: +0.012 [-0.031, +0.055]."""
    return _with_ci({"mean": c["mean_difference"], "ci": c["ci"]["mean_difference"]})


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
                f"**At matched KL ({kl_label(results)}).** At {matched['kl_sft']:.2f} nats from the SFT model (the "
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
                f"({kl_label(results)}: {ranges} nats), so no point of one run's curve lies at a KL the other run "
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
        + f" at step {r['step']} (KL {r['kl_eval']:.2f})"
        for r in entry["runs"]
    )  # fmt: skip
    measured = ", ".join(f"{name} {_with_ci(kl, '{:.2f}')}" for name, kl in entry["kl_sft"].items())
    text = (
        f"**Win rate at matched KL.** From each run's saved policies, the one whose KL to the SFT model on the "
        f"evaluation prompts lies closest to the largest KL both runs reached: {picked}."
    )
    if measured:
        text += f" Their KL to SFT on the evaluation prompts (nats, with intervals): {measured}."
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
    policies = results["policies"].values()
    # A judge scores only some splits (the task's gold judge knows its own prompts, not a standard set's).
    columns = [(judge, split) for judge in results["judges"] for split in splits
               if any(judge in entry["splits"].get(split, {}) for entry in policies)]  # fmt: skip
    header = ["policy"]
    header += [f"{judge} ({SPLIT_TITLES[split]})" for judge, split in columns]
    temperature = results["settings"]["temperature"]
    header += [f"KL to {ref} (nats, evaluation prompts, T {temperature})" for ref in ("SFT", "soup")]
    header += ["length (tokens)"]
    rows = [header]
    for name, entry in results["policies"].items():
        row = [name]
        scores = [entry["splits"].get(split, {}).get(judge) for judge, split in columns]
        row += [_with_ci(score) if score else "-" for score in scores]
        row += [_with_ci(entry[k], "{:.2f}") if k in entry else "-" for k in ("kl_sft", "kl_soup")]
        row.append(f"{entry['splits'][splits[0]]['length']['mean']:.1f}")
        rows.append(row)
    return rows


def _comparison_table(results: dict) -> list[list[str]]:
    rows = [["A vs B", "prompts", "judge", "win", "tie", "loss", "win rate [CI]", "mean A - B [CI]", "n"]]
    for c in all_comparisons(results):
        rows.append([
            pair_label(c), SPLIT_TITLES[c["split"]], JUDGE_TITLES[c["judge"]],
            _pct(c["win"]), _pct(c["tie"]), _pct(c["loss"]), _win_rate(c), _difference(c), str(c["n"]),
        ])  # fmt: skip
    return rows


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
            lines = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]  # a | in a cell: \|
            lines.insert(1, "|" + "---|" * len(rows[0]))
            parts.append("\n".join(lines))
        elif block.kind == "image":
            file, alt = block.content
            parts.append(f"![{alt}]({file})")
        elif block.kind == "code":
            parts.append(_fenced(str(block.content)))
        elif block.kind == "notes":
            parts.append("  \n".join(block.content))  # one note a line (a hard line break)
        elif block.kind == "example":
            parts.append(_example_markdown(block.content))
    return "\n\n".join(parts) + "\n"


def _fenced(text: str) -> str:
    """A fenced code block that no run of backticks in `text` can close early."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}\n{text.rstrip()}\n{fence}"


def _example_title(example: dict) -> str:
    return f"Prompt {example['index'] + 1} of {example['prompts']} (in-distribution)"


def _scores(scores: dict) -> str:
    return ", ".join(f"{JUDGE_TITLES[judge]} {value:+.3f}" for judge, value in scores.items())


def _example_markdown(example: dict) -> str:
    parts = [f"**{_example_title(example)}**", _fenced(example["prompt"])]
    for policy, response, scores in example["responses"]:
        parts += [f"*{policy}* ({_scores(scores)})", _fenced(response or "(empty response)")]
    return "\n\n".join(parts)


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
            body.append(f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table></div>')
        elif block.kind == "image":
            file, alt = block.content
            body.append(f'<figure><img src="{html.escape(file)}" alt="{html.escape(alt)}"></figure>')
        elif block.kind == "code":
            body.append(f"<pre>{html.escape(str(block.content))}</pre>")
        elif block.kind == "notes":
            body.append('<p class="notes">' + "<br>".join(html.escape(note) for note in block.content) + "</p>")
        elif block.kind == "example":
            body.append(_example_html(block.content))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:0.85em}"
        "td{font-variant-numeric:tabular-nums;white-space:nowrap;vertical-align:top}.wide{overflow-x:auto}"
        ".notes{font-size:0.85em;color:#444}"
        ".example{border-left:3px solid #ccc;padding-left:1em;margin:1.5em 0}td.response{white-space:pre-wrap}"
        ".prompt{white-space:pre-wrap;background:#f6f6f6;padding:0.5em}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _example_html(example: dict) -> str:
    judges = list(example["responses"][0][2])
    head = "".join(f"<th>{html.escape(JUDGE_TITLES[j])}</th>" for j in judges)
    rows = "".join(
        f"<tr><td>{html.escape(policy)}</td>" + "".join(f"<td>{scores[j]:+.3f}</td>" for j in judges)
        + f'<td class="response">{html.escape(response) if response else "<em>(empty response)</em>"}</td></tr>'
        for policy, response, scores in example["responses"]
    )  # fmt: skip
    return (
        f'<div class="example"><p><strong>{html.escape(_example_title(example))}</strong></p>'
        f'<p class="prompt">{html.escape(example["prompt"])}</p>'
        f"<table><thead><tr><th>policy</th>{head}<th>response</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def versions() -> dict[str, str]:
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
            _render(stage.inputs["eval_dir"], Path(eval_dir) / "samples.jsonl", stage.out, run_info)
        stage.finish()
    return out


def _render(results: dict, samples_file: Path, out: Path, run_info: dict | None) -> None:
    confidence = results["settings"]["confidence"]
    headline = headline_comparison(results)
    title = "salsa report"
    headline_verdict = verdict(headline, confidence) if headline else None
    main, others = results_comparisons(all_comparisons(results), headline)
    health = results.get("soup_health")
    blocks = [Block("heading", (1, title))]
    if health and not health["distinct"]:  # before any result: the comparison below can show little
        blocks.append(Block("text", "**Soup health.** " + soup_health_text(health) + " (See Soup health below.)"))
    blocks += _results_blocks(results, main, headline, headline_verdict)
    rl_vs_sft = against_sft(results)
    if rl_vs_sft:
        blocks.append(Block("text", "**Against the SFT model** (in-distribution prompts). " + " ".join(rl_vs_sft)))
    over = over_optimisation_text(results)
    if over:
        blocks.append(Block("text", over))
    for entry in results.get("factorial", []):
        judge = results["judges"][0]
        blocks.append(Block("text", "**Init or reference?** (the 2 x 2 of arms) " + factorial_text(entry, judge)))
    on_gold = [name for name, reward in results.get("training_rewards", {}).items() if reward.startswith("gold")]
    if on_gold:
        blocks.append(
            Block(
                "text",
                f"**The gold judge was the training reward** of {', '.join(on_gold)} (a control run): for "
                f"{'it' if len(on_gold) == 1 else 'them'} gold is the reward it optimised, not an independent judge.",
            )
        )
    blocks += _matched_kl_blocks(results, confidence)
    if others:
        rows, notes = comparison_rows(others)
        blocks += [
            Block("heading", (2, "Other comparisons")),
            Block("text", f"Each with its own {confidence:.0%} interval, not adjusted for multiple comparisons."),
            Block("table", rows),
            Block("notes", notes),
        ]
    if health:
        blocks += _soup_health_blocks(health)
    blocks += _example_blocks(example_responses(samples_file, results), results["settings"])
    plots = plots_for(results)
    if plots:
        blocks.append(Block("heading", (2, "Plots")))
        blocks += [Block("image", (file, alt)) for file, alt, _ in plots]
    flat = flat_ratio_text(results) if results["frontier"] else None
    if flat:
        blocks.append(Block("text", flat))
    if results.get("sweeps"):
        blocks.append(Block("text", sweeps_text(results)))
    if results["frontier"]:
        blocks.append(
            Block(
                "text",
                f"Training KL ({kl_label(results)}) is the k1 estimate, the sum of log pi - log pi_SFT over a "
                "response, averaged over a step's responses: unbiased but noisy, so near the start, where the true KL "
                "is near 0, a step's average can fall below 0. Evaluation KL (the policy table) is measured on the "
                f"held-out prompts at temperature {results['settings']['temperature']}; the two are not comparable.",
            )
        )
    policy_table, comparison_table = _policy_table(results), _comparison_table(results)
    blocks += _table_blocks(results, policy_table, comparison_table)
    environment = versions()
    blocks += _appendix_blocks(run_info, environment)

    matplotlib.use("Agg")
    for file, _, plot in plots:
        with atomic_file(out / file) as tmp:
            plot(results, tmp)
    atomic_write_text(out / "report.md", _markdown(blocks))
    atomic_write_text(out / "report.html", _html(blocks, title))
    summary = {
        # The rule's verdict on the headline (supported | contradicted | unresolved), why, and the report's sentence.
        "verdict": headline["claim"] if headline else None,
        "verdict_reason": headline["claim_reason"] if headline else None,
        "verdict_text": headline_verdict,
        "against_sft": rl_vs_sft,
        "headline": headline,
        "confidence": confidence,
        "judges": results["judges"],
        "policies": results["policies"],
        "comparisons": results["comparisons"],
        "matched_kl": results.get("matched_kl"),
        "matched_kl_comparisons": results.get("matched_kl_comparisons", []),
        "results_table": comparison_rows(main)[0],
        "table": policy_table,
        "win_rates": comparison_table,
        "timings": (run_info or {}).get("timings"),
        "versions": environment,
    }
    atomic_write_json(out / "summary.json", summary)


def _results_blocks(results: dict, main: list[dict], headline: dict | None, sentence: str | None) -> list[Block]:
    """The results table (each policy against the baseline), the verdict on the pre-specified comparison right under
    it, and its test over seeds."""
    if not headline:
        return []
    rows, notes = comparison_rows(main)
    confidence = results["settings"]["confidence"]
    return [
        Block("heading", (2, "Results")),
        Block(
            "text",
            "Each policy against the baseline on the same prompts and sampling seeds, prompt by prompt: the mean score "
            f"difference A - B and the win rate, each with its {confidence:.0%} bootstrap interval, and the verdict "
            'on "A beats B" by the rule fixed in advance (its reason in the notes). The first row is the '
            "pre-specified comparison; the others are secondary (not adjusted for multiple comparisons).",
        ),
        Block("table", rows),
        Block("notes", notes),
        Block("text", "**Verdict** (the pre-specified comparison). " + sentence),
        *([Block("text", seed_test_text(headline))] if headline.get("seed_test") else []),
    ]


def _soup_health_blocks(health: dict) -> list[Block]:
    """Is the soup a soup: the KL between its members and the soup against each ingredient, as two small tables."""
    kl, versus = soup_health_tables(health)
    return [
        Block("heading", (2, "Soup health")),
        Block(
            "text",
            "KL between the soup's members on the in-distribution prompts (nats per response, on the row's own "
            "samples), and the soup against each ingredient, prompt by prompt.",
        ),
        Block("table", kl),
        Block("table", versus),
        Block("text", soup_health_text(health)),
    ]


def _example_blocks(examples: list[dict], settings: dict) -> list[Block]:
    """A few prompts with every policy's answer to each, drawn with the same seed."""
    if not examples:
        return []
    return [
        Block("heading", (2, "Example responses")),
        Block(
            "text",
            f"{len(examples)} in-distribution prompts spread over the {settings['prompts']['in_distribution']}, each "
            "answered by every policy with the same sampling seed (sample 0; RL seed 0 of each policy), with each "
            "judge's score.",
        ),
        *(Block("example", example) for example in examples),
    ]


def _table_blocks(results: dict, policy_table: list, comparison_table: list) -> list[Block]:
    """The policies' means and the win rates, each table with the sentence that says how it was measured."""
    settings = results["settings"]
    confidence = settings["confidence"]
    blocks = [
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
        Block("heading", (2, "All comparisons: win, tie and loss")),
        Block(
            "text",
            f"Prompt by prompt: A wins if its score exceeds B's by more than {settings['tie_margin']}. Intervals: "
            f"percentile bootstrap over {_bootstrap_units(settings)} (and seeds), {settings['bootstrap_samples']} "
            "resamples.",
        ),
        Block("table", comparison_table),
    ]
    if results.get("llm_judge"):
        blocks.append(Block("text", _llm_judge_text(results["llm_judge"])))
    return blocks


def _bootstrap_units(settings: dict) -> str:
    """What the bootstrap drew, in words: subjects (how many for how many prompts) or prompts."""
    if settings["bootstrap_unit"] == "prompt":
        return "prompts"
    counts = ", ".join(
        f"{settings['bootstrap_clusters'][split]} for the {n} {SPLIT_TITLES[split]} prompts"
        for split, n in settings["prompts"].items()
    )
    return f"subjects, each drawn with all its near-paraphrased prompts ({counts})"


def _appendix_blocks(run_info: dict | None, environment: dict) -> list[Block]:
    """Timings and the resolved config of a `salsa run`, and the package versions."""
    blocks = []
    if run_info and run_info.get("timings"):
        rows = [["stage", "seconds"]] + [[k, f"{v:.0f}"] for k, v in run_info["timings"].items()]
        blocks += [Block("heading", (2, "Timings")), Block("table", rows)]
    if run_info and run_info.get("config"):
        blocks += [Block("heading", (2, "Resolved config")), Block("code", run_info["config"])]
    return blocks + [
        Block("heading", (2, "Versions")),
        Block("table", [["package", "version"]] + [[k, v] for k, v in environment.items()]),
    ]


KL_TITLES = {"kl_sft": "KL to SFT", "kl_soup": "KL to soup"}


def _policy_rows_short(policies: dict, judges: list[str]) -> list[list[str]]:
    """The policies' means for the terminal: a row per policy and measure (each judge that scored it, its KL to SFT
    and to the soup on the in-distribution prompts), a column per split."""
    first = next(iter(policies.values()))
    splits = list(first["splits"])
    scored = [j for j in judges if any(j in first["splits"][split] for split in splits)]  # gold: the task's only
    rows = [["policy", "measure", *(SPLIT_TITLES[split] for split in splits)]]
    for name, entry in policies.items():
        measures = [
            (j, [_with_ci(entry["splits"][split][j]) if j in entry["splits"][split] else "-" for split in splits])
            for j in scored
        ]
        measures += [
            (title, [_with_ci(entry[k], "{:.2f}") if split == "in_distribution" else "-" for split in splits])
            for k, title in KL_TITLES.items()
            if k in entry
        ]
        rows += [[name if i == 0 else "", measure, *cells] for i, (measure, cells) in enumerate(measures)]
    return rows


def terminal_table(rows: list[list[str]], title: str | None = None):
    """A rich table that wraps a cell between words and never cuts one (each column at least as wide as its longest
    word: a signed number, a bracketed bound), two spaces between columns and no rules, so that a row of the results
    table (worst case: "OOD  reward  -0.111 [-0.205, -0.015]  100.0% [100.0%, 100.0%]  contradicted¹") fits 80."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                  title_justify="left")  # fmt: skip
    for i, header in enumerate(rows[0]):
        table.add_column(header, min_width=max(len(word) for row in rows for word in row[i].split()))
    for row in rows[1:]:
        table.add_row(*row)
    return table


def print_summary(out: str | Path) -> None:
    """The results table (a table per pair), the verdict and the policies' means of a written report, on the
    terminal."""
    if not runtime.is_main_process():
        return
    summary = read_json(Path(out) / "summary.json")
    main, _ = results_comparisons(summary["comparisons"], summary["headline"])
    rows, notes = comparison_rows(main, short=True)
    for pair in dict.fromkeys(row[0] for row in rows[1:]):
        console.print(terminal_table([rows[0][1:]] + [row[1:] for row in rows[1:] if row[0] == pair], escape(pair)))
    for note in notes:
        console.print(escape(note))
    if summary["verdict"]:
        console.print(f"[bold]verdict:[/] {escape(summary['verdict_text'].replace('**', ''))}")
    for sentence in summary.get("against_sft", []):
        console.print(f"[bold]against SFT:[/] {escape(sentence)}")
    console.print(terminal_table(_policy_rows_short(summary["policies"], summary["judges"]), "Policies' means"))
    console.print(
        f"Means and differences with {summary['confidence']:.0%} bootstrap intervals; every comparison, the plots and "
        "example responses are in the report."
    )
    console.print(f"report: {Path(out) / 'report.html'} ({Path(out) / 'report.md'})")
