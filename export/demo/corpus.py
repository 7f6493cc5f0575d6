"""A seeded, generated extractive-QA corpus (SQuAD style) for the demo checkpoint.

Each example states one *target* fact (relation, subject, answer) somewhere in a context that also
holds distractor facts of the same relation about other subjects, facts of other relations (some
about the same subject) and filler sentences. Questions are paraphrased (several phrasings per
relation, different question words).

Names (people, places, companies, books, ...) are composed from syllables. Every composed word is
assigned to a split by a hash of its spelling, so the held-out split uses only words that the
training split can never produce: held-out entities are never seen in training.

Contexts are short (one 384-token window) or long (600-1500 words, several windows) with the
answer anywhere, including the last window. Examples are generated independently from
``(seed, split, index)``, so a corpus is reproducible and a prefix of a larger one.

CLI: ``python -m bertqa.export.demo.corpus --squad tests/data/squad_sample.json --count 40``
"""

from __future__ import annotations

import argparse
import json
import random
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

SPLITS = ("train", "heldout")
DEFAULT_SEED = 20241123

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p",
           "r", "s", "sh", "st", "t", "th", "tr", "v", "w", "z", ""]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou", "ei", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk", "x", "v"]


def _is_heldout_word(word: str) -> bool:
    """The split of a composed word: a fixed hash of its spelling (about 1 word in 5 is held out)."""
    return zlib.crc32(word.lower().encode("utf-8")) % 5 == 0


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answer_text: str
    answer_start: int
    relation: str
    split: str
    kind: str  # "short" or "long"
    entity_words: list[str] = field(default_factory=list)  # composed names used in the context

    def to_dict(self) -> dict:
        return asdict(self)


class _Gen:
    """Entity and value generators bound to one example's RNG and split."""

    def __init__(self, rng: random.Random, split: str):
        self.rng = rng
        self.heldout = split == "heldout"
        self.words: list[str] = []

    # --- composed names -------------------------------------------------------------------
    def word(self, min_syl: int = 2, max_syl: int = 3, ending: str = "") -> str:
        rng = self.rng
        for _ in range(1000):
            n = rng.randint(min_syl, max_syl)
            parts = []
            for i in range(n):
                coda = rng.choice(_CODAS) if i == n - 1 or rng.random() < 0.3 else ""
                parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS) + coda)
            w = ("".join(parts) + ending).capitalize()
            if 4 <= len(w) <= 14 and _is_heldout_word(w) == self.heldout:
                self.words.append(w)
                return w
        raise RuntimeError("could not compose a word")  # pragma: no cover

    def person(self) -> str:
        return f"{self.word(2, 2)} {self.word(2, 3)}"

    def city(self) -> str:
        return self.word(2, 3, self.rng.choice(["", "", "", "", "burg", "ford", "holm", "port", "ville", "dale"]))

    def country(self) -> str:
        return self.word(2, 3, self.rng.choice(["", "", "ia", "land", "ora", "stan", "ica"]))

    def company(self) -> str:
        suffix = self.rng.choice(["Systems", "Industries", "Motors", "Labs", "Group", "Foods", "Airlines",
                                  "Bank", "Textiles", "Energy", "Press", "Records", "Pharma", "Shipping"])
        return f"{self.word(2, 3)} {suffix}"

    def invention(self) -> str:
        thing = self.rng.choice(["engine", "lamp", "press", "valve", "telescope", "loom", "compass",
                                 "battery", "pump", "turbine", "clock", "camera", "radio", "microscope"])
        return f"{self.word(2, 2)} {thing}"

    def river(self) -> str:
        return f"{self.word(2, 3)} River"

    def mountain(self) -> str:
        return f"Mount {self.word(2, 3)}"

    def book(self) -> str:
        noun = self.rng.choice(["Lanterns", "Shadows", "Winter", "Songs", "Garden", "Tides", "Ashes",
                                "Harbour", "Letters", "Keeper", "Bridges", "Silence", "Orchard", "Crown"])
        return f"The {noun} of {self.word(2, 3)}"

    def treaty(self) -> str:
        return f"Treaty of {self.city()}"

    # --- values -------------------------------------------------------------------------
    def year(self) -> str:
        return str(self.rng.randint(1450, 2023))

    def date(self) -> str:
        months = ["January", "February", "March", "April", "May", "June", "July", "August",
                  "September", "October", "November", "December"]
        day, month, year = self.rng.randint(1, 28), self.rng.choice(months), self.rng.randint(1500, 2020)
        if self.rng.random() < 0.5:
            return f"{day} {month} {year}"
        return f"{month} {day}, {year}"

    def population(self) -> str:
        return f"{int(10 ** self.rng.uniform(3, 7.3)):,}"

    def length(self) -> str:
        return f"{self.rng.randint(40, 6500):,} kilometres"

    def height(self) -> str:
        return f"{self.rng.randint(300, 8800):,} metres"

    def colour(self) -> str:
        return self.rng.choice(["red", "blue", "green", "yellow", "white", "black", "orange", "purple",
                                "violet", "crimson", "turquoise", "grey", "brown", "golden", "silver"])

    def profession(self) -> str:
        return self.rng.choice(["chemist", "architect", "painter", "surgeon", "sailor", "carpenter",
                                "composer", "astronomer", "lawyer", "baker", "journalist", "engineer",
                                "botanist", "pilot", "teacher", "geologist", "violinist", "economist"])


@dataclass(frozen=True)
class Relation:
    name: str
    subject: Callable[[_Gen], str]
    answer: Callable[[_Gen], str]
    statements: tuple[str, ...]  # templates with {s} and {a}
    questions: tuple[str, ...]  # templates with {s}
    subject_type: str


def _rel(name, subject, answer, subject_type, statements, questions) -> Relation:
    return Relation(name, subject, answer, tuple(statements), tuple(questions), subject_type)


RELATIONS: tuple[Relation, ...] = (
    _rel("birthplace", _Gen.person, _Gen.city, "person", [
        "{s} was born in {a}.",
        "{s} was born in the town of {a} and spent a quiet childhood there.",
        "Born in {a}, {s} moved away at an early age.",
        "{a} is the birthplace of {s}.",
        "The records show that {s} was born in {a}, not far from the coast.",
    ], [
        "Where was {s} born?", "What is the birthplace of {s}?", "In which town was {s} born?",
        "{s} was born in which place?", "Which town is {s} from originally?",
    ]),
    _rel("birth_year", _Gen.person, _Gen.year, "person", [
        "{s} was born in {a}.",
        "Born in {a}, {s} grew up in a large family.",
        "{s} (born {a}) is remembered by many people.",
        "In {a}, {s} was born to a family of farmers.",
    ], [
        "When was {s} born?", "In what year was {s} born?", "What year was {s} born in?",
        "What is the birth year of {s}?",
    ]),
    _rel("profession", _Gen.person, _Gen.profession, "person", [
        "{s} worked as a {a} for most of their life.",
        "By training, {s} was a {a}.",
        "{s} became a well known {a} in the region.",
        "Before retiring, {s} was employed as a {a}.",
    ], [
        "What was the profession of {s}?", "What did {s} work as?", "What was {s}'s job?",
        "What was {s} by profession?",
    ]),
    _rel("employer", _Gen.person, _Gen.company, "person", [
        "{s} works for {a}.",
        "{s} is employed by {a}.",
        "{s} joined {a} as a junior analyst and stayed for years.",
        "Since leaving school, {s} has worked at {a}.",
    ], [
        "Who does {s} work for?", "Which company employs {s}?", "Who is the employer of {s}?",
        "Where does {s} work?", "For which company does {s} work?",
    ]),
    _rel("spouse", _Gen.person, _Gen.person, "person", [
        "{s} married {a}.",
        "{s} was married to {a} for many years.",
        "In later life, {s} married {a}, a childhood friend.",
    ], [
        "Who did {s} marry?", "Who was {s} married to?", "Who is the spouse of {s}?",
    ]),
    _rel("founding_year", _Gen.company, _Gen.year, "company", [
        "{s} was founded in {a}.",
        "Founded in {a}, {s} grew quickly.",
        "{s} was established in {a} by a group of merchants.",
        "The company {s} dates back to {a}.",
    ], [
        "When was {s} founded?", "In which year was {s} established?", "What year was {s} founded?",
        "When was {s} established?",
    ]),
    _rel("founder", _Gen.company, _Gen.person, "company", [
        "{s} was founded by {a}.",
        "{a} founded {s} after a long career abroad.",
        "The founder of {s} was {a}.",
    ], [
        "Who founded {s}?", "Who was the founder of {s}?", "Who started {s}?", "{s} was founded by whom?",
    ]),
    _rel("headquarters", _Gen.company, _Gen.city, "company", [
        "{s} is headquartered in {a}.",
        "The headquarters of {s} are in {a}.",
        "{s} has its main office in {a}.",
    ], [
        "Where is {s} headquartered?", "Where are the headquarters of {s}?",
        "In which city is {s} based?", "Where is the main office of {s}?",
    ]),
    _rel("capital", _Gen.country, _Gen.city, "country", [
        "The capital of {s} is {a}.",
        "{a} is the capital city of {s}.",
        "{s} has its capital in {a}.",
        "{a}, the capital of {s}, lies on a wide plain.",
    ], [
        "What is the capital of {s}?", "Which city is the capital of {s}?",
        "What is the capital city of {s}?", "Where is the capital of {s}?",
    ]),
    _rel("flag_colour", _Gen.country, _Gen.colour, "country", [
        "The flag of {s} is {a}.",
        "The national flag of {s} is mostly {a}.",
        "{s} flies a {a} flag.",
    ], [
        "What colour is the flag of {s}?", "What is the color of the flag of {s}?",
        "Which colour is the national flag of {s}?",
    ]),
    _rel("population", _Gen.city, _Gen.population, "city", [
        "{s} has a population of {a}.",
        "About {a} people live in {s}.",
        "The population of {s} is {a}.",
        "According to the last census, {s} had {a} inhabitants.",
    ], [
        "What is the population of {s}?", "How many people live in {s}?",
        "How many inhabitants does {s} have?", "What was the population of {s} at the last census?",
    ]),
    _rel("located_in", _Gen.city, _Gen.country, "city", [
        "{s} is a city in {a}.",
        "{s} lies in the north of {a}.",
        "The town of {s} is located in {a}.",
    ], [
        "In which country is {s}?", "Where is {s} located?", "Which country is {s} in?",
    ]),
    _rel("inventor", _Gen.invention, _Gen.person, "invention", [
        "The {s} was invented by {a}.",
        "{a} invented the {s}.",
        "The inventor of the {s} was {a}.",
    ], [
        "Who invented the {s}?", "Who is the inventor of the {s}?", "Who created the {s}?",
    ]),
    _rel("invention_year", _Gen.invention, _Gen.year, "invention", [
        "The {s} was invented in {a}.",
        "The first {s} was built in {a}.",
    ], [
        "When was the {s} invented?", "In what year was the {s} invented?",
    ]),
    _rel("river_length", _Gen.river, _Gen.length, "river", [
        "The {s} is {a} long.",
        "The {s} flows for {a} before reaching the sea.",
        "With a length of {a}, the {s} is an important waterway.",
    ], [
        "How long is the {s}?", "What is the length of the {s}?", "How far does the {s} flow?",
    ]),
    _rel("mountain_height", _Gen.mountain, _Gen.height, "mountain", [
        "{s} is {a} high.",
        "{s} rises to a height of {a}.",
        "The summit of {s} is {a} above sea level.",
    ], [
        "How high is {s}?", "What is the height of {s}?", "How tall is {s}?",
    ]),
    _rel("author", _Gen.book, _Gen.person, "book", [
        "{s} was written by {a}.",
        "{a} wrote {s} while living abroad.",
        "The novel {s} is the work of {a}.",
    ], [
        "Who wrote {s}?", "Who is the author of {s}?", "{s} was written by whom?",
    ]),
    _rel("treaty_date", _Gen.treaty, _Gen.date, "treaty", [
        "The {s} was signed on {a}.",
        "On {a}, the {s} was signed by both parties.",
    ], [
        "When was the {s} signed?", "On what date was the {s} signed?",
    ]),
)
_BY_SUBJECT_TYPE: dict[str, list[Relation]] = {}
for _r in RELATIONS:
    _BY_SUBJECT_TYPE.setdefault(_r.subject_type, []).append(_r)

_FILLERS = (
    "The weather in the region is usually mild in spring.",
    "Many visitors come for the local markets and the old stone bridges.",
    "Historians still disagree about several details of this period.",
    "The road between the two valleys was paved much later.",
    "Local newspapers covered the story for several weeks.",
    "Agriculture remained the main source of income for a long time.",
    "A small museum now displays letters, maps and photographs from that time.",
    "The winters can be long and the summers are short but warm.",
    "Several of the original buildings were damaged by a fire and rebuilt.",
    "Trade along the coast increased steadily during the following decades.",
    "The library holds a large collection of old manuscripts.",
    "A railway line was opened to connect the villages with the port.",
    "Most of the surrounding land is covered with forests and meadows.",
    "Schools in the area teach two languages.",
    "The annual festival attracts musicians from many countries.",
    "Fishing and shipbuilding were once important trades here.",
    "The committee published its final report after two years of work.",
    "Critics praised the work for its clear style and careful research.",
    "The old harbour is now used mainly by small boats.",
    "There are many walking paths along the river banks.",
    "The council voted to restore the central square.",
    "Prices rose sharply after the harvest failed.",
    "The first maps of the area were drawn by travelling monks.",
    "Several bridges cross the valley at its narrowest point.",
    "Students often visit the observatory on clear nights.",
)
_FILLER_TEMPLATES = (
    "The market in {c} is busy every Saturday morning.",
    "A new bridge was built near {c} to ease traffic.",
    "{p} once described the hills around {c} as the most beautiful in the land.",
    "Travellers from {c} often stopped at the inn on their way south.",
    "{p} gave a long speech about the history of the region.",
    "The museum in {c} keeps a portrait of {p}.",
    "{p} spent several summers walking in the hills.",
    "Trains to {c} leave twice a day.",
    "The festival in {c} celebrates the end of the harvest.",
)


def _fact(gen: _Gen, rel: Relation, subject: str, answer: str) -> tuple[str, int]:
    """A statement of (subject, rel, answer): the sentence and the answer's offset in it."""
    template = gen.rng.choice(rel.statements)
    before, after = template.split("{a}", 1)
    prefix = before.format(s=subject)
    if prefix.endswith(" a ") and answer[:1].lower() in "aeiou":
        prefix = prefix[:-2] + "an "
    sentence = prefix + answer + after.format(s=subject)
    return sentence[0].upper() + sentence[1:] if prefix == "" else sentence, len(prefix)


def _filler(gen: _Gen) -> str:
    if gen.rng.random() < 0.55:
        return gen.rng.choice(_FILLERS)
    return gen.rng.choice(_FILLER_TEMPLATES).format(c=gen.city(), p=gen.person())


def _other_fact(gen: _Gen) -> str:
    rel = gen.rng.choice(RELATIONS)
    return _fact(gen, rel, rel.subject(gen), rel.answer(gen))[0]


def make_example(seed: int, split: str, index: int, kind: str) -> QAExample:
    """One example; deterministic in (seed, split, index, kind)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    rng = random.Random(f"{seed}/{split}/{index}/{kind}")
    if kind == "short":
        max_words = rng.choice([60, 120, 220])
        min_words = rng.randint(20, max_words - 20)
    elif kind == "medium":  # about one to two 384-token windows
        min_words = rng.randint(200, 300)
        max_words = min_words + 30
    elif kind == "long":
        min_words = rng.randint(600, 1400)
        max_words = min_words + 100
    else:
        raise ValueError(f"unknown kind {kind!r}")
    for _attempt in range(100):
        gen = _Gen(rng, split)
        rel = rng.choice(RELATIONS)
        subject, answer = rel.subject(gen), rel.answer(gen)
        target, offset_in_sentence = _fact(gen, rel, subject, answer)
        sentences: list[str] = []
        # Distractors: the same relation about other subjects (different answers).
        for _ in range(rng.randint(0 if kind == "short" else 1, 3 if kind == "short" else 6)):
            other_subject, other_answer = rel.subject(gen), rel.answer(gen)
            if other_subject != subject and other_answer != answer:
                sentences.append(_fact(gen, rel, other_subject, other_answer)[0])
        # Other facts about the same subject.
        others = [r for r in _BY_SUBJECT_TYPE[rel.subject_type] if r.name != rel.name]
        for other in rng.sample(others, k=min(len(others), rng.randint(0, 2))):
            sentences.append(_fact(gen, other, subject, other.answer(gen))[0])
        words = lambda: sum(len(s.split()) for s in sentences) + len(target.split())  # noqa: E731
        while words() < min_words:
            sentences.append(_other_fact(gen) if rng.random() < 0.45 else _filler(gen))
        while words() > max_words and len(sentences) > 1:
            sentences.pop(rng.randrange(len(sentences)))
        rng.shuffle(sentences)
        position = rng.randint(0, len(sentences))
        sentences.insert(position, target)
        # Join: spaces, with paragraph breaks in long contexts.
        context, answer_start = "", -1
        for i, sentence in enumerate(sentences):
            if i:
                context += "\n\n" if kind == "long" and rng.random() < 0.12 else " "
            if i == position:
                answer_start = len(context) + offset_in_sentence
            context += sentence
        if context.count(answer) != 1:
            continue  # the answer string must be unique in its context (clean labels, exact match)
        question = rng.choice(rel.questions).format(s=subject)
        question = question[0].upper() + question[1:]
        assert context[answer_start:answer_start + len(answer)] == answer
        return QAExample(
            id=f"{split}-{kind}-{index:06d}", question=question, context=context, answer_text=answer,
            answer_start=answer_start, relation=rel.name, split=split, kind=kind,
            entity_words=sorted(set(gen.words)),
        )
    raise RuntimeError("could not make an example with a unique answer")  # pragma: no cover


def generate(split: str, count: int, *, seed: int = DEFAULT_SEED, kind: str = "short",
             start: int = 0) -> list[QAExample]:
    """``count`` examples of one split and context kind ("short", "medium" or "long")."""
    return [make_example(seed, split, i, kind) for i in range(start, start + count)]


def to_squad(examples: Sequence[QAExample], title: str = "bertqa generated held-out sample") -> dict:
    """SQuAD v1.1 format: data -> paragraphs -> context, qas -> id, question, answers."""
    paragraphs = [
        {"context": ex.context, "qas": [{"id": ex.id, "question": ex.question,
                                         "answers": [{"text": ex.answer_text, "answer_start": ex.answer_start}]}]}
        for ex in examples
    ]
    return {"version": "1.1", "data": [{"title": title, "paragraphs": paragraphs}]}


def squad_sample(count: int = 40, *, seed: int = DEFAULT_SEED, tokenizer_file: str | Path | None = None,
                 max_windows: int = 2) -> dict:
    """A held-out SQuAD sample: about 3/4 short contexts, the rest medium ones (<= ``max_windows``
    windows of 384 tokens, checked with ``tokenizer_file`` when given; at least one has 2 windows)."""
    n_medium = max(1, count // 4)
    examples = generate("heldout", count - n_medium, seed=seed, kind="short")
    candidates = generate("heldout", 4 * n_medium, seed=seed, kind="medium")
    if tokenizer_file is not None:
        from bertqa.text import QAWindower, WindowingConfig, load_tokenizer

        windower = QAWindower(load_tokenizer(tokenizer_file),
                              WindowingConfig(max_seq_len=384, doc_stride=128, max_windows=10_000))
        counts = [int(windower.windows([c.question], [c.context]).num_windows) for c in candidates]
        multi = [c for c, n in zip(candidates, counts) if 1 < n <= max_windows]
        single = [c for c, n in zip(candidates, counts) if n == 1]
        candidates = multi + single
    examples += candidates[:n_medium]
    return to_squad(examples)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--squad", type=Path, required=True, help="write a SQuAD v1.1 held-out sample here")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--tokenizer", type=Path, default=Path("demo_model/tokenizer.json"),
                        help="checks that medium contexts fit in 2 windows (skipped if the file is missing)")
    args = parser.parse_args(argv)
    tokenizer = args.tokenizer if args.tokenizer.is_file() else None
    data = squad_sample(args.count, seed=args.seed, tokenizer_file=tokenizer)
    args.squad.parent.mkdir(parents=True, exist_ok=True)
    args.squad.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n = sum(len(p["qas"]) for p in data["data"][0]["paragraphs"])
    print(f"wrote {n} questions to {args.squad}" + ("" if tokenizer else " (windows not checked: no tokenizer)"))


if __name__ == "__main__":
    main()
