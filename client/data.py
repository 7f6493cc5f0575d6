"""Question/context pairs for `bertqa bench` and the locust users: real SQuAD v1.1 dev pairs when dev has
been fetched (`bertqa data squad`), else a built-in SQuAD-like set; or a data file (``--data``).

The built-in set is generated deterministically (no download): encyclopedic paragraphs about
invented people, places and organisations, with a question whose answer is a span of the context.
Lengths follow SQuAD v1.1's dev set roughly — contexts mostly 60-250 words (median ~110) with a
tail (8%) of long paragraphs (300-650 words, i.e. two or three 384-token windows), questions 6-16
words — so tokenisation, windowing and BERT cost per request resemble real traffic rather than a
single repeated sentence.

``--data FILE`` reads SQuAD v1.1/v2.0 JSON or JSON Lines of ``{"question", "context"}`` objects
through :func:`bertqa.squad.read_examples`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bertqa.client.stats import percentile
from bertqa.squad import QAExample, read_examples

DEFAULT_SAMPLES = 256
DEFAULT_SEED = 0

_FIRST = ("Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ines", "Jonas", "Kamala",
          "Lars", "Mira", "Nikolai", "Olga", "Pedro", "Rosa", "Stefan", "Tomas", "Ulla", "Viktor", "Wanda",
          "Yusuf", "Zora")
_LAST = ("Albrecht", "Bianchi", "Castell", "Duarte", "Eklund", "Ferreira", "Grünwald", "Halvorsen", "Ibarra",
         "Jovanović", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov", "Quispe", "Rasmussen",
         "Sandoval", "Takahashi", "Ulrich", "Varga", "Weiss", "Zeller")
_CITIES = ("Aldermoor", "Brevik", "Castelnuovo", "Dunmere", "Eskerfield", "Fallowmere", "Glenhaven", "Harrowgate",
           "Ironbridge", "Kestrel Bay", "Lindenau", "Marrowdale", "Northwick", "Oakhurst", "Port Selwyn",
           "Quarry Hill", "Ravensholm", "Saltmarsh", "Thornbury", "Valdoria")
_COUNTRIES = ("Arvenia", "Borduria", "Caldora", "Drovania", "Elbonia", "Florin", "Genovia", "Karnak")
_ORGS = ("Royal Society of Cartographers", "Northern Railway Company", "Institute of Marine Biology",
         "Guild of Clockmakers", "National Observatory", "Harbour Trust", "Academy of Fine Arts",
         "Free University", "Botanical Garden Society", "Philharmonic Orchestra")
_RIVERS = ("Aller", "Brenna", "Corvin", "Dessa", "Elwe", "Faron", "Gelda", "Hollis")
_FIELDS = ("astronomy", "botany", "chemistry", "geology", "linguistics", "mathematics", "medicine",
           "music theory", "naval engineering", "philosophy")
_OBJECTS = ("a lighthouse lens", "a tidal clock", "a suspension bridge", "a steam dredger", "a star atlas",
            "a printing press", "a seismograph", "a glass conservatory")

# Sentences that carry no answer; they give contexts their length (and distractors).
_FILLER = (
    "The {org} held its annual meeting in {city} that year, and several members presented papers on {field}.",
    "Contemporary accounts describe {city} as a busy market town on the banks of the {river}.",
    "Critics at the time disagreed about the value of the work, although most praised its careful method.",
    "During the following decades the population of {city} grew steadily as new industries arrived.",
    "A second edition appeared in {year2}, with corrections supplied by {person2}.",
    "The river {river} was frequently flooded in spring, which delayed construction on more than one occasion.",
    "Historians of {field} still cite these letters, which are kept in the archive of the {org}.",
    "The railway connecting {city} with the coast opened shortly afterwards and changed the regional economy.",
    "Funding came partly from private donors and partly from the government of {country}.",
    "Several of the original drawings were lost in a fire, but copies survived in private collections.",
    "{person2} later wrote that the years in {city} had been the most productive of the whole period.",
    "The committee also discussed the budget, the condition of the buildings and the training of apprentices.",
    "In the museum of {city}, a room is dedicated to instruments used in {field} during that era.",
    "Although the project was controversial, it was eventually completed within the planned budget.",
)

# (fact sentence, question, answer field) — the answer is the formatted value of that field.
_FACTS = (
    ("{person} was born in {city} in {year}.", "Where was {person} born?", "city"),
    ("{person} was born in {city} in {year}.", "In what year was {person} born?", "year"),
    ("In {year}, the {org} moved its headquarters to {city}.", "Where did the {org} move its headquarters?", "city"),
    ("In {year}, the {org} moved its headquarters to {city}.", "When did the {org} move to {city}?", "year"),
    ("{person} studied {field} at the {org} before becoming its director.", "What did {person} study?", "field"),
    ("The {org} was founded by {person} in {year}.", "Who founded the {org}?", "person"),
    ("The {org} was founded by {person} in {year}.", "In which year was the {org} founded?", "year"),
    ("{city} lies on the river {river} in the north of {country}.", "On which river does {city} lie?", "river"),
    ("{city} lies on the river {river} in the north of {country}.", "In which country is {city} located?", "country"),
    ("In {year}, {person} designed {obj} for the harbour of {city}.", "What did {person} design for the harbour?", "obj"),
    ("The first director of the {org} was {person}, appointed in {year}.",
     "Who was the first director of the {org}?", "person"),
)


@dataclass(frozen=True)
class DataSummary:
    source: str
    samples: int
    context_words_mean: float
    context_words_p50: float
    context_words_p95: float
    context_words_max: int
    question_words_mean: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def describe(self) -> str:
        return (
            f"{self.samples} pairs from {self.source}: context words mean {self.context_words_mean:.0f}, "
            f"p50 {self.context_words_p50:.0f}, p95 {self.context_words_p95:.0f}, max {self.context_words_max}; "
            f"question words mean {self.question_words_mean:.1f}"
        )


def _values(rng: random.Random) -> dict[str, str]:
    year = rng.randint(1780, 1990)
    return {
        "person": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
        "person2": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
        "city": rng.choice(_CITIES),
        "country": rng.choice(_COUNTRIES),
        "org": rng.choice(_ORGS),
        "river": rng.choice(_RIVERS),
        "field": rng.choice(_FIELDS),
        "obj": rng.choice(_OBJECTS),
        "year": str(year),
        "year2": str(year + rng.randint(2, 30)),
    }


def _target_words(rng: random.Random) -> int:
    """SQuAD-like context length: a log-normal body around 110 words plus an 8% tail of long ones."""
    if rng.random() < 0.08:
        return rng.randint(300, 650)
    return int(min(300, max(40, math.exp(rng.gauss(math.log(110), 0.4)))))


def builtin_examples(count: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> list[QAExample]:
    """``count`` deterministic question/context pairs with gold answers (same seed, same pairs)."""
    rng = random.Random(seed)
    examples = []
    for number in range(count):
        values = _values(rng)
        fact, question, field = rng.choice(_FACTS)
        target = _target_words(rng)
        sentences: list[str] = []
        words = len(fact.split())
        while words < target:
            filler_values = _values(rng)
            filler_values["city"] = rng.choice((values["city"], filler_values["city"]))
            sentence = rng.choice(_FILLER).format(**filler_values)
            sentences.append(sentence)
            words += len(sentence.split())
        sentences.insert(rng.randint(0, len(sentences)), fact.format(**values))
        context = " ".join(sentences)
        examples.append(QAExample(f"builtin-{seed}-{number}", question.format(**values), context, (values[field],)))
    return examples


@dataclass(frozen=True)
class Pairs:
    """The pairs a load generator sends and where they came from (said in its output)."""

    examples: list[QAExample]
    source: str


def squad_dev_sample(count: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> Pairs | None:
    """``count`` real SQuAD v1.1 dev pairs (a seeded random sample, so the length mix is dev's), or None
    when dev has not been fetched (``bertqa data squad``; ``BERTQA_DATA_DIR`` says where)."""
    from bertqa.squad import squad_file

    try:
        path = squad_file("dev")
    except FileNotFoundError:
        return None
    examples = read_examples(path)
    chosen = random.Random(seed).sample(examples, min(count, len(examples)))
    return Pairs(chosen, f"SQuAD v1.1 dev ({path}; a seed-{seed} sample of its {len(examples)} questions)")


def load_examples(path: str | Path | None, count: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> Pairs:
    """The pairs a benchmark sends: ``path`` (SQuAD JSON / JSON Lines, cut to ``count``), else real SQuAD
    dev pairs when fetched, else the built-in generated set."""
    if path is not None:
        examples = read_examples(path)
        return Pairs(examples[:count] if count and count < len(examples) else examples, str(path))
    dev = squad_dev_sample(count, seed)
    if dev is not None:
        return dev
    return Pairs(builtin_examples(count, seed),
                 "the built-in generated set (SQuAD v1.1 dev not fetched; `bertqa data squad` fetches it)")


def summarize(examples: Sequence[QAExample], source: str) -> DataSummary:
    context_words = sorted(len(e.context.split()) for e in examples)
    question_words = [len(e.question.split()) for e in examples]
    return DataSummary(
        source,
        len(examples),
        sum(context_words) / len(context_words),
        percentile(context_words, 50, presorted=True),
        percentile(context_words, 95, presorted=True),
        context_words[-1],
        sum(question_words) / len(question_words),
    )


def request_batches(examples: Sequence[QAExample], batch_size: int) -> list[tuple[list[str], list[str]]]:
    """One (questions, contexts) batch per example: batch k holds examples k*B .. k*B+B-1 (cyclic), so
    every pair is sent and consecutive requests differ."""
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    if not examples:
        raise ValueError("no question/context pairs to send")
    n = len(examples)
    batches = []
    for k in range(n):
        chosen = [examples[(k * batch_size + j) % n] for j in range(batch_size)]
        batches.append(([e.question for e in chosen], [e.context for e in chosen]))
    return batches


def perf_analyzer_input_data(batches: Sequence[tuple[list[str], list[str]]]) -> dict:
    """perf_analyzer's ``--input-data`` JSON for the same requests ``bertqa bench`` sends (one entry each).

    String inputs are listed per request: ``{"data": [{"question": [...], "context": [...]}, ...]}``;
    with batches of more than one pair, run perf_analyzer with ``-b`` equal to the batch size.
    """
    if not batches:
        raise ValueError("no question/context pairs to write")
    return {"data": [{"question": list(questions), "context": list(contexts)} for questions, contexts in batches]}
