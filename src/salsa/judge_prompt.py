"""The LLM judge's prompt and verdict logic, apart from any model: the template, its filling, and the rule that
turns the two orders' answers into one verdict (see `salsa.evaluation.llm_judge`).

A template is any text with the placeholders {prompt}, {response_a} and {response_b}; the first response
shown is labelled A. `DEFAULT_TEMPLATE` is used unless `eval.judge_template` names a file.
"""

from __future__ import annotations

import re

from salsa.errors import DataError

PLACEHOLDERS = ("{prompt}", "{response_a}", "{response_b}")
LABELS = ("A", "B")

DEFAULT_TEMPLATE = """Two assistants answered the same request. Decide which response follows the request better: \
helpful, correct, on topic and well written. Do not let the order of the responses or their length decide.

[Request]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

Which response is better? Answer with one letter: A or B."""


def check_template(template: str, where: str) -> str:
    missing = [p for p in PLACEHOLDERS if p not in template]
    if missing:
        raise DataError(f"{where}: the judge template lacks {', '.join(missing)}; it needs all of {PLACEHOLDERS}")
    return template


def fill_template(template: str, prompt: str, first: str, second: str) -> str:
    """The template with the prompt and the two responses in the order shown, in one pass: a placeholder (or any
    brace) inside a prompt or response is text, not substituted again."""
    values = dict(zip(PLACEHOLDERS, (prompt, first, second), strict=True))
    return re.sub("|".join(re.escape(p) for p in PLACEHOLDERS), lambda m: values[m.group(0)], template)


def conversation_text(prompt: list[dict[str, str]], response: str) -> str:
    """A conversation as one response for the judge (an MT-Bench second turn): each turn under `### User:` or
    `### Assistant:`, the layout of FastChat's multi-turn judge prompts, ending with `response`. Its assistant is not
    named A or B: the template labels each response by the place it is shown in, which the two orders swap."""
    turns = [*prompt, {"role": "assistant", "content": response}]
    return "\n\n".join(f"### {turn['role'].capitalize()}:\n{turn['content']}" for turn in turns)


def order_verdict(score_first: float, score_second: float) -> int:
    """One order's verdict: +1 if the response shown first is preferred, -1 if the second, 0 if neither."""
    return int(score_first > score_second) - int(score_first < score_second)


def pairwise_verdict(a_first: int, b_first: int) -> int:
    """A against B from the two orders: +1 (A wins) only if A is preferred both when shown first (`a_first` = +1)
    and when shown second (`b_first` = -1); -1 likewise for B; 0 (a tie) when the orders disagree or abstain."""
    a_when_first, a_when_second = a_first, -b_first
    return a_when_first if a_when_first == a_when_second else 0
