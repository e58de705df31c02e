"""The built-in task: one-sentence reviews with a *requested* sentiment about a named subject.

The default model already writes positive reviews when asked for a review, so a plain "be positive"
objective would saturate at once. Asking for a positive or a negative review of a named subject leaves
headroom: the model must follow the requested polarity, stay on the subject and write fluent text.

Gold judge, version 2 (`GOLD_JUDGE_VERSION`; nobody here wrote the sentiment model: it is VADER's lexicon,
Hutto & Gilbert 2014):

    polarity = VADER compound(response) * (+1 if positive was requested else -1)      in [-1, 1]
    form     = fluency * prose * not_a_list * finished * concise                       in [0, 1]
    on_topic = 1 if the response names the subject (its keyword as a whole word), else 0
    gold     = form * on_topic * polarity - (1 - form)                                in [-2, 1]

    fluency    1 for varied text, falling to 0 for repetition or fewer than 4 words (version 1's only factor)
    prose      1 with at least one function word (the, was, and, ...) per 4 words, falling below: a run of
               adjectives is not a sentence
    not_a_list 1 up to 3 short items (1-2 words between commas, "and", "or", or adjacent sentiment words),
               0.25 less per further item: "wonderful, lovely, amazing, ..." stacks sentiment, it does not review
    finished   1 when the response ends a sentence (. ! ? or an emoji, closing quotes allowed), else 0.5: a
               response cut at the length limit stops mid-sentence
    concise    1 up to 40 words, then 40 / words: one sentence was asked for

so a degenerate or unfinished answer scores below the same answer well formed (gold rises with form whatever
the polarity), and an answer about something else earns no sentiment credit. The keyword matches as a whole
word, in the singular or plural ("market" is not named by "marketing", nor "course" by "of course").
Version 1 (results that record no version) had the fluency factor alone and matched the keyword as the start of
any word.

Splits: in-distribution prompts are reviews of products, places and services, with train and eval split
by subject (disjoint); the out-of-distribution split reviews media and art with differently phrased
prompts.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from functools import lru_cache

SENTIMENTS = ("positive", "negative")

# (subject phrase, keyword a response must mention to count as on the subject)
TRAIN_SUBJECTS = (
    ("a neighbourhood bakery", "bakery"), ("a budget hotel", "hotel"), ("a pair of running shoes", "shoe"),
    ("a used bookshop", "bookshop"), ("a pizza restaurant", "pizza"), ("a city bus service", "bus"),
    ("a wireless keyboard", "keyboard"), ("a yoga studio", "yoga"), ("a coffee machine", "coffee"),
    ("a dentist's office", "dentist"), ("a camping tent", "tent"), ("a sushi bar", "sushi"),
    ("a laptop backpack", "backpack"), ("a car rental agency", "rental"), ("a public library", "library"),
    ("an electric kettle", "kettle"), ("a hair salon", "salon"), ("a mobile phone plan", "phone"),
    ("a garden centre", "garden"), ("a food delivery app", "delivery"), ("a winter jacket", "jacket"),
    ("a hardware store", "hardware"), ("a vegetarian cafe", "cafe"), ("a fitness tracker", "tracker"),
)  # fmt: skip
EVAL_SUBJECTS = (
    ("a pair of headphones", "headphone"), ("a farmers' market", "market"), ("an airport lounge", "lounge"),
    ("a bicycle repair shop", "bicycle"), ("a language course", "course"), ("a streaming service", "streaming"),
    ("a cinema", "cinema"), ("a museum of modern art", "museum"),
)  # fmt: skip
OOD_SUBJECTS = (
    ("a detective novel", "novel"), ("a science fiction film", "film"), ("a jazz album", "album"),
    ("a video game about pirates", "game"), ("a cooking podcast", "podcast"), ("a stand-up comedy show", "comedy"),
    ("a ballet performance", "ballet"), ("a history documentary", "documentary"), ("a board game", "board"),
    ("a poetry collection", "poem"), ("a television drama series", "series"), ("a photography exhibition", "photo"),
)  # fmt: skip

TEMPLATES = (
    "Write a one-sentence {sentiment} review of {subject}.",
    "In one sentence, give a {sentiment} review of {subject}.",
    "Write a short {sentiment} customer review of {subject}, one sentence only.",
)
OOD_TEMPLATES = (
    "You are a critic. Share a {sentiment} opinion about {subject} in a single sentence.",
    "Tell a friend, in one sentence, your {sentiment} take on {subject}.",
    "Describe {subject} in one {sentiment} sentence for a magazine column.",
)
# Every sixth training subject is held out of training as the dev split: settings are tuned on it (and the reward
# model's held-out pairs come from it), never on the evaluation prompts.
DEV_SUBJECTS = TRAIN_SUBJECTS[5::6]
SPLITS = {
    "train": (tuple(s for s in TRAIN_SUBJECTS if s not in DEV_SUBJECTS), TEMPLATES),
    "dev": (DEV_SUBJECTS, TEMPLATES),
    "eval": (EVAL_SUBJECTS, TEMPLATES),
    "ood": (OOD_SUBJECTS, OOD_TEMPLATES),
}
KEYWORDS = {phrase: keyword for subjects, _ in SPLITS.values() for phrase, keyword in subjects}


def make_prompt(subject: str, sentiment: str, template: str = TEMPLATES[0]) -> str:
    return template.format(subject=subject, sentiment=sentiment)


def prompts(split: str) -> list[dict[str, str]]:
    """Every prompt of a split with its metadata (subject, requested sentiment)."""
    subjects, templates = SPLITS[split]
    return [
        {"prompt": make_prompt(subject, sentiment, template), "subject": subject, "sentiment": sentiment}
        for subject, _ in subjects
        for sentiment in SENTIMENTS
        for template in templates
    ]


def counterpart(prompt: str) -> str:
    """The same request with the opposite sentiment (its twin prompt)."""
    swap = {"positive": "negative", "negative": "positive"}
    return re.sub(r"\b(positive|negative)\b", lambda m: swap[m.group(1)], prompt)


def other_subject(prompt: str) -> str | None:
    """The same request about the next subject of the prompt's split (answers to it are off-subject here)."""
    _, subject = parse_request(prompt)
    phrases = next(([p for p, _ in s] for s, _ in SPLITS.values() if subject in dict(s)), None)
    if phrases is None:
        return None
    return prompt.replace(subject, phrases[(phrases.index(subject) + 1) % len(phrases)])


# ---------------------------------------------------------------- gold judge


GOLD_JUDGE_VERSION = 2  # recorded with every result the gold judge scores; change it whenever its scores change

# Words that hold a sentence together; a response with too few of them is a list, not prose.
FUNCTION_WORDS = frozenset(
    "a an the this that these those my your his her its our their i me we us you he she it they them and or but so "
    "because although though while if than as of in on at by for with from to into about over under after before "
    "during without through between is are was were be been being am do does did have has had will would can could "
    "should may might must not no never very too also just really".split()
)
_WORD = re.compile(r"[a-z']+")
_LIST_SEPARATOR = re.compile(r"[,;:.!?…/&()\n]+|\b(?:and|or)\b")
_ENDING = re.compile(r"[.!?…][\s\"'”’)\]*]*$|[\u2600-\u27bf\U0001f000-\U0001faff][\s\ufe0f]*$")
# The keywords that are not named by a plain plural, or whose plain match names something else.
_MENTIONS = {
    "course": r"(?<!of )courses?",  # "of course" is not a course
    "photo": r"photo(?:s|graphs?|graphy|graphers?)?",
    "poem": r"poems?|poetry|poets?",
}


def _mention(keyword: str) -> re.Pattern:
    forms = _MENTIONS.get(keyword) or (
        rf"{keyword}|{keyword[:-1]}ies" if keyword.endswith("y") else rf"{keyword}(?:e?s)?"
    )
    return re.compile(rf"\b(?:{forms})\b")


MENTIONS = {phrase: _mention(keyword) for phrase, keyword in KEYWORDS.items()}


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # the CLI lists the tasks without it

    return SentimentIntensityAnalyzer()


def parse_request(prompt: str) -> tuple[str, str | None]:
    """The requested sentiment and the subject named in a built-in prompt."""
    sentiment = "negative" if re.search(r"\bnegative\b", prompt) else "positive"
    subject = next((s for s in sorted(KEYWORDS, key=len, reverse=True) if s in prompt), None)
    return sentiment, subject


def _plain(text: str) -> str:
    """Lower case without accents ("café" is "cafe")."""
    return unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()


def fluency(words: list[str]) -> float:
    """1.0 for varied text; lower for repetition (low type/token ratio, repeated trigrams) or < 4 words."""
    if len(words) < 4:
        return 0.0
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    if trigrams and max(trigrams.values()) >= 3:
        return 0.0
    distinct = len(set(words)) / len(words)
    return min(1.0, max(0.0, (distinct - 0.3) / 0.3))


def prose(words: list[str]) -> float:
    """1.0 with at least one function word per 4 words (the first 4 words may have none), lower below."""
    return min(1.0, 4 * (sum(w in FUNCTION_WORDS for w in words) + 1) / len(words))


def list_items(text: str) -> int:
    """How many short items (1-2 words) the text lists: between commas, "and", "or" and other separators, and
    between two adjacent sentiment words ("wonderful lovely amazing" is three)."""
    lexicon = _vader().lexicon
    items = 0
    for segment in _LIST_SEPARATOR.split(text):
        length, previous = 0, False
        for word in _WORD.findall(segment):
            sentiment = word in lexicon
            if length and previous and sentiment:  # a new item begins
                items += length <= 2
                length = 0
            length, previous = length + 1, sentiment
        items += 0 < length <= 2
    return items


def finished(response: str) -> bool:
    """Whether the response ends a sentence: final punctuation (closing quotes after it allowed) or an emoji."""
    return _ENDING.search(response.rstrip()) is not None


def form(response: str) -> float:
    """How well formed the response is as a one-sentence review, in [0, 1]; see the module docstring."""
    text = _plain(response)
    words = _WORD.findall(text)
    fluent = fluency(words)
    if fluent == 0.0:
        return 0.0
    not_a_list = min(1.0, max(0.0, (7 - list_items(text)) / 4))
    ending = 1.0 if finished(response) else 0.5
    return fluent * prose(words) * not_a_list * ending * min(1.0, 40 / len(words))


def on_topic(subject: str | None, response: str) -> bool:
    """Whether the response names the subject: its keyword as a whole word (or plural); True without a subject."""
    return subject is None or MENTIONS[subject].search(_plain(response)) is not None


def gold_score(prompt: str, response: str) -> float:
    """The gold judge over (prompt, response); see the module docstring."""
    sentiment, subject = parse_request(prompt)
    compound = _vader().polarity_scores(response)["compound"]
    polarity = compound if sentiment == "positive" else -compound
    well_formed = form(response)
    return well_formed * float(on_topic(subject, response)) * polarity - (1.0 - well_formed)


# ---------------------------------------------------------------- template demonstrations

_OPENERS = {
    "positive": ("I loved {subject}", "{Subject} was a real delight", "I was impressed by {subject}",
                 "{Subject} exceeded my expectations"),
    "negative": ("I was disappointed by {subject}", "{Subject} was a letdown", "I regret choosing {subject}",
                 "{Subject} fell far short of my expectations"),
}  # fmt: skip
_REASONS = {
    "positive": ("the staff were friendly and helpful", "the quality was excellent for the price",
                 "everything worked perfectly from the start", "it was clean, pleasant and well run",
                 "it made my week so much better"),
    "negative": ("the staff were rude and unhelpful", "the quality was poor for the price",
                 "nothing worked properly from the start", "it was dirty, noisy and badly run",
                 "it made my week much worse"),
}  # fmt: skip
_CLOSERS = {
    "positive": ("and I would happily recommend it.", "and I will definitely come back.", "and it was worth it."),
    "negative": ("and I would not recommend it.", "and I will not come back.", "and it was a waste of money."),
}


def template_review(subject: str, sentiment: str, rng: random.Random) -> str:
    """A fluent one-sentence review of the requested polarity, built from phrase banks."""
    opener = rng.choice(_OPENERS[sentiment]).format(subject=subject, Subject=subject[0].upper() + subject[1:])
    return f"{opener} because {rng.choice(_REASONS[sentiment])}, {rng.choice(_CLOSERS[sentiment])}"


def demonstrations(seed: int = 0) -> list[dict[str, str]]:
    """Template prompt/completion pairs for the train prompts, in a seeded order (`builtin:reviews`)."""
    rng = random.Random(seed)
    rows = [
        {"prompt": p["prompt"], "completion": template_review(p["subject"], p["sentiment"], rng)}
        for p in prompts("train")
    ]
    rng.shuffle(rows)
    return rows
