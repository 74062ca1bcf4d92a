"""The built-in demo corpus: human-written dates in five languages → ISO 8601.

Generated from Babel's CLDR data (localized month and day names), deterministic by
seed, no network. Every format is chosen so that the date is recoverable from the
text alone: two-digit years only where the year range (1950-2049) makes them
unambiguous, and no two locales share a day/month order with the same separators.
"""

from __future__ import annotations

import datetime
import random

from babel.dates import format_date

from pipelines.corpus import ParallelCorpus

# Babel/CLDR format names or patterns, per locale.
FORMATS = {
    "en": ["full", "long", "medium", "short", "d MMMM y", "EEE d MMM y", "EEEE, d MMMM y"],
    "de": ["full", "long", "medium", "short", "d. MMM y", "EEE, d. MMMM y"],
    "fr": ["full", "long", "short", "d MMM y", "EEE d MMMM y"],
    "es": ["full", "long", "medium", "EEE, d MMM y", "d 'de' MMM 'de' y"],
    "ko": ["full", "long", "medium", "short", "y년 M월 d일 EEE"],
}
FIRST_DAY = datetime.date(1950, 1, 1)
DAYS = (datetime.date(2049, 12, 31) - FIRST_DAY).days + 1


def human_date(date: datetime.date, rng: random.Random) -> str:
    locale = rng.choice(sorted(FORMATS))
    text = format_date(date, rng.choice(FORMATS[locale]), locale=locale)
    if locale != "ko" and rng.random() < 0.15:
        text = text.lower()
    return text


def date_corpus(size: int, seed: int = 0, name: str = "dates") -> ParallelCorpus:
    """`size` (human date, ISO date) pairs drawn uniformly from 1950-2049."""
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(size):
        date = FIRST_DAY + datetime.timedelta(days=rng.randrange(DAYS))
        sources.append(human_date(date, rng))
        targets.append(date.isoformat())
    return ParallelCorpus(sources, targets, name)


def date_splits(train: int = 20000, valid: int = 1000, test: int = 1000, seed: int = 0):
    """Disjoint-by-seed train / valid / test splits of the date corpus."""
    return {
        "train": date_corpus(train, seed, "dates/train"),
        "valid": date_corpus(valid, seed + 1, "dates/valid"),
        "test": date_corpus(test, seed + 2, "dates/test"),
    }
