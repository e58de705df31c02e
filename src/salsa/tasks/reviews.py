"""The built-in task: one-sentence reviews with a *requested* sentiment about a named subject.

The default model already writes positive reviews when asked for a review, so a plain "be positive"
objective would saturate at once. Asking for a positive or a negative review of a named subject leaves
headroom: the model must follow the requested polarity and stay on the subject.
"""

from __future__ import annotations

import random

SENTIMENTS = ("positive", "negative")

# In-distribution subjects: places, products and services a customer would review.
SUBJECTS = (
    "a neighbourhood bakery",
    "a budget hotel",
    "a pair of running shoes",
    "a used bookshop",
    "a pizza restaurant",
    "a city bus service",
    "a wireless keyboard",
    "a yoga studio",
    "a coffee machine",
    "a dentist's office",
    "a camping tent",
    "a sushi bar",
    "a laptop backpack",
    "a car rental agency",
    "a public library",
    "an electric kettle",
    "a hair salon",
    "a museum of modern art",
    "a mobile phone plan",
    "a garden centre",
    "a food delivery app",
    "a winter jacket",
    "a cinema",
    "a hardware store",
    "a vegetarian cafe",
    "a pair of headphones",
    "a fitness tracker",
    "a farmers' market",
    "an airport lounge",
    "a bicycle repair shop",
    "a language course",
    "a streaming service",
)

TEMPLATES = (
    "Write a one-sentence {sentiment} review of {subject}.",
    "In one sentence, give a {sentiment} review of {subject}.",
    "Write a short {sentiment} customer review of {subject}, one sentence only.",
)

_OPENERS = {
    "positive": (
        "I loved {subject}",
        "{Subject} was a real delight",
        "I was impressed by {subject}",
        "{Subject} exceeded my expectations",
    ),
    "negative": (
        "I was disappointed by {subject}",
        "{Subject} was a letdown",
        "I regret choosing {subject}",
        "{Subject} fell far short of my expectations",
    ),
}
_REASONS = {
    "positive": (
        "the staff were friendly and helpful",
        "the quality was excellent for the price",
        "everything worked perfectly from the start",
        "it was clean, pleasant and well run",
        "it made my week so much better",
    ),
    "negative": (
        "the staff were rude and unhelpful",
        "the quality was poor for the price",
        "nothing worked properly from the start",
        "it was dirty, noisy and badly run",
        "it made my week much worse",
    ),
}
_CLOSERS = {
    "positive": ("and I would happily recommend it.", "and I will definitely come back.", "and it was worth it."),
    "negative": ("and I would not recommend it.", "and I will not come back.", "and it was a waste of money."),
}


def make_prompt(subject: str, sentiment: str, template: str = TEMPLATES[0]) -> str:
    return template.format(subject=subject, sentiment=sentiment)


def template_review(subject: str, sentiment: str, rng: random.Random) -> str:
    """A fluent one-sentence review of the requested polarity, built from phrase banks."""
    opener = rng.choice(_OPENERS[sentiment]).format(subject=subject, Subject=subject[0].upper() + subject[1:])
    return f"{opener} because {rng.choice(_REASONS[sentiment])}, {rng.choice(_CLOSERS[sentiment])}"


def demonstrations(seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion pairs for every subject x sentiment x template, in a seeded order."""
    rng = random.Random(seed)
    rows = [
        {"prompt": make_prompt(subject, sentiment, template), "completion": template_review(subject, sentiment, rng)}
        for subject in SUBJECTS
        for sentiment in SENTIMENTS
        for template in TEMPLATES
    ]
    rng.shuffle(rows)
    return rows
