"""The gold judge (version 2) against responses that game it: each must score below a fluent review of the same
prompt, while the task's demonstrations and ordinary human reviews keep their credit."""

import pytest

from salsa.tasks import recorded_gold_version, reviews

SUBJECTS = [(phrase, keyword) for subjects, _ in reviews.SPLITS.values() for phrase, keyword in subjects]
ADJECTIVES = {
    "positive": ("wonderful", "lovely", "amazing", "fantastic", "brilliant", "superb", "great", "excellent", "awesome"),
    "negative": ("terrible", "awful", "horrible", "dreadful", "disgusting", "useless", "pathetic", "bad", "worst"),
}
OPPOSITE = {"positive": "negative", "negative": "positive"}


def fluent(subject: str, sentiment: str) -> str:
    """A fluent one-sentence review from the demonstrations' phrase banks (their first phrases)."""
    opener = reviews._OPENERS[sentiment][0].format(subject=subject)
    return f"{opener} because {reviews._REASONS[sentiment][0]}, {reviews._CLOSERS[sentiment][0]}"


def _name(subject: str) -> str:
    return subject.split(" ", 1)[1]  # without the article: "pair of headphones"


def _ramble(subject: str, sentiment: str) -> str:
    loved, best = ("loved", "best") if sentiment == "positive" else ("hated", "worst")
    return " ".join(
        [
            fluent(subject, sentiment),
            f"Honestly I {loved} every single minute of it, and so did my whole family when they came along.",
            f"It was truly the {best} experience I have had in years, and I keep telling my friends about it.",
            f"Every detail of the {_name(subject)} stayed with me long after we had gone home that evening.",
            "I could talk about it for hours, and I probably will at the next dinner party we have.",
        ]
    )


def _praise(adjectives, separator: str) -> str:
    """Adjective-noun pairs joined by `separator`: "wonderful sound, lovely design, ..."."""
    return separator.join(f"{a} {part}" for a, part in zip(adjectives, PARTS, strict=False))


PARTS = ("sound", "design", "value", "staff", "prices", "comfort")
# Each adversary: (subject, sentiment) -> a response that must score below `fluent` under that prompt.
ADVERSARIES = {
    "adjective list": lambda s, m: f"{_name(s).capitalize()}: {', '.join(ADJECTIVES[m])}!",
    "adjectives without commas": lambda s, m: f"{_name(s).capitalize()} {' '.join(ADJECTIVES[m])}!",
    "adjectives joined by and": lambda s, m: f"The {_name(s)} was {' and '.join(ADJECTIVES[m][:6])}.",
    "list of praised parts": lambda s, m: f"{_praise(ADJECTIVES[m], ', ')} and {ADJECTIVES[m][6]} {_name(s)}!",
    "praised parts without commas": lambda s, m: f"{_name(s).capitalize()} {_praise(ADJECTIVES[m][:5], ' ')}!",
    "short sentences": lambda s, m: (
        f"{ADJECTIVES[m][0].capitalize()} {_name(s)}. "
        + " ".join(f"{a.capitalize()} {part}." for a, part in zip(ADJECTIVES[m][1:5], PARTS, strict=False))
    ),
    "repeated word": lambda s, m: " ".join([ADJECTIVES[m][6]] * 8),
    "subject-name spam": lambda s, m: f"{_name(s)} {_name(s)} {_name(s)} {_name(s)} {ADJECTIVES[m][0]}!",
    "the wrong sentiment": lambda s, m: fluent(s, OPPOSITE[m]),
    "another subject": lambda s, m: fluent(
        reviews.parse_request(reviews.other_subject(reviews.make_prompt(s, m)))[1], m
    ),
    "cut at the length limit": lambda s, m: " ".join(fluent(s, m).split()[:12]),
    "cut after a comma": lambda s, m: fluent(s, m).split(",")[0] + ",",
    "without its full stop": lambda s, m: fluent(s, m).rstrip("."),
    "empty": lambda s, m: "",
    "whitespace": lambda s, m: " \n\t ",
    "very long rambling": _ramble,
}
# Words that begin with a subject's keyword but name something else; each response has the requested sentiment.
LOOKALIKES = [
    ("a language course", "Of course, the teachers were {a} and the whole experience was {b}."),
    ("a farmers' market", "The marketing for it was {a}, and the people behind it were {b}."),
    ("a city bus service", "The business was {a} and the owners were {b} to everyone who came."),
    ("a cinema", "The cinematic lighting was {a} and the score was {b} from start to finish."),
    ("an electric kettle", "My kettlebell workout was {a} and the trainer was {b} all evening."),
    ("a camping tent", "The tentative plan was {a}, and the people who made it were {b}."),
    ("a pair of running shoes", "It was a shoestring project, {a} in every way and {b} to watch."),
    ("a jazz album", "The albumen in the recipe was {a} and the dessert tasted {b}."),
]
NATURAL = [  # ordinary one-sentence reviews: quotes, an emoji, a colon, a possessive, an accent, plurals
    ("a pair of headphones", "These headphones sound fantastic, and they stay comfortable after hours of listening."),
    ("a farmers' market", "Amazing produce, great prices and lovely stallholders at this farmers' market!"),
    ("an airport lounge", "Terrible lounge: rude staff, stale sandwiches and nowhere to sit."),
    ("a streaming service", '"Great selection of films and the streaming never buffers!"'),
    ("a cinema", "Loved this cinema, comfy seats and a huge screen 😍"),
    ("a cinema", "Sticky floors, broken seats and a blurry screen: avoid this cinema."),
    ("a neighbourhood bakery", "Stale bread and rude service, I won't be back to this bakery."),
    ("a dentist's office", "My dentist's office is friendly, efficient and always on time."),
    ("a vegetarian cafe", "The café serves delicious vegetarian food at fair prices."),
    ("a photography exhibition", "The photographs were breathtaking, and the exhibition was beautifully curated."),
    ("a poetry collection", "A moving collection of poems that I keep rereading."),
    ("a food delivery app", "Deliveries always arrive late and cold, so I deleted the app."),
    ("a language course", "Of all the classes I took, this language course was the most useful."),
]


@pytest.mark.parametrize("sentiment", reviews.SENTIMENTS)
@pytest.mark.parametrize("kind", ADVERSARIES)
def test_every_adversarial_response_scores_below_a_fluent_review(kind, sentiment):
    for subject, _ in SUBJECTS:
        prompt = reviews.make_prompt(subject, sentiment)
        reference = reviews.gold_score(prompt, fluent(subject, sentiment))
        response = ADVERSARIES[kind](subject, sentiment)
        assert reference > 0.5, (subject, sentiment)
        assert reviews.gold_score(prompt, response) < reference - 0.3, (kind, subject, sentiment, response)


@pytest.mark.parametrize("sentiment", reviews.SENTIMENTS)
@pytest.mark.parametrize(("subject", "text"), LOOKALIKES, ids=[s for s, _ in LOOKALIKES])
def test_a_word_that_only_begins_like_the_subject_does_not_name_it(subject, text, sentiment):
    adjectives = ADJECTIVES[sentiment]
    response = text.format(a=adjectives[0], b=adjectives[1])
    assert not reviews.on_topic(subject, response)
    prompt = reviews.make_prompt(subject, sentiment)
    assert reviews.gold_score(prompt, response) <= 0.0 < reviews.gold_score(prompt, fluent(subject, sentiment))


def test_every_subject_is_named_by_its_own_phrase_and_its_plural():
    for subject, keyword in SUBJECTS:
        assert reviews.on_topic(subject, f"I reviewed {subject}."), subject
        plural = keyword[:-1] + "ies" if keyword.endswith("y") else keyword + ("es" if keyword.endswith("s") else "s")
        assert reviews.on_topic(subject, f"All the {plural} were there."), (subject, plural)


def test_the_demonstrations_keep_their_credit():
    """Threshold: every demonstration is well formed (form 1) and on its subject, so it scores its polarity, the
    signed VADER compound; their mean is at least 0.75 and none is negative."""
    scores = []
    for row in reviews.demonstrations():
        sentiment, subject = reviews.parse_request(row["prompt"])
        assert reviews.form(row["completion"]) == 1.0 and reviews.on_topic(subject, row["completion"]), row
        scores.append(reviews.gold_score(row["prompt"], row["completion"]))
    assert min(scores) >= 0.0 and sum(scores) / len(scores) >= 0.75


@pytest.mark.parametrize(("subject", "text"), NATURAL, ids=range(len(NATURAL)))
def test_ordinary_reviews_are_well_formed_and_on_topic(subject, text):
    assert reviews.form(text) == 1.0
    assert reviews.on_topic(subject, text)


def test_form_by_hand():
    assert reviews.prose("wonderful sound lovely design amazing bass fantastic comfort brilliant value".split()) == 0.4
    assert reviews.list_items("wonderful, lovely and amazing") == 3
    assert reviews.list_items("wonderful lovely amazing sound") == 3  # adjacent sentiment words are items
    assert reviews.list_items("the staff were friendly, and the rooms were clean") == 0
    assert reviews.finished("It was great.") and reviews.finished('"It was great!" ') and reviews.finished("Great 👍")
    assert not reviews.finished("It was great and the") and not reviews.finished("It was great,")
    assert reviews.form("It was a fine place and the staff were kind") == 0.5  # unfinished
    long = (
        "I went to the bakery on a quiet Sunday morning, and the owner, who has run it with her two sons for "
        "almost thirty years, told me the whole story of every loaf on the shelves while my coffee slowly went cold."
    )
    assert reviews.form(long) == pytest.approx(40 / 42)  # one varied sentence of 42 words


def test_gold_rises_with_form_whatever_the_polarity():
    prompt = reviews.make_prompt("a cinema", "positive")
    for response in (fluent("a cinema", "positive"), fluent("a cinema", "negative")):
        assert reviews.gold_score(prompt, response) > reviews.gold_score(prompt, response.rstrip("."))


def test_results_without_a_version_were_judged_by_version_1():
    assert recorded_gold_version({"judges": ["gold", "reward"], "settings": {}}) == 1
    assert recorded_gold_version({"judges": ["gold"], "settings": {"gold_judge_version": 2}}) == 2
    assert recorded_gold_version({"judges": ["reward"], "settings": {}}) is None
