"""A judge-free concept score: how many of a generation's words are the concept's signature words.

An LLM judge with a small model is noise; this score is transparent and costs nothing. A concept's signature
words are the `k` words with the highest smoothed log-odds of appearing in its training positives versus every
other training text (the shared negatives and the other concepts' positives), among words that appear in at
least `min_share` of its positives and at least twice as frequent there, stop words excluded. The score of a generation is the share (%) of its words in the signature.
It is a proxy for the judge's concept rating — it sees words, not meaning, and rewards repeating them — so the
report shows it next to the judge's scores, never instead of them. The RePS science check uses the same score.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Collection, Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

COLUMN = "lexical_score"
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def signature_words(positives: Iterable[str], negatives: Iterable[str], k: int = 30,
                    min_share: float = 0.15, min_log_odds: float = math.log(2),
                    stop_words: Collection[str] = ENGLISH_STOP_WORDS) -> list[str]:
    """The `k` words most typical of `positives` against `negatives` (smoothed log-odds of document frequency),
    among those at least `exp(min_log_odds)` times as frequent in positives (twice, by default: function words
    rarely qualify, so a small train split gives a short signature rather than a padded one); English stop words
    (scikit-learn's list) never do."""
    positive_sets = [set(words(text)) for text in positives]
    negative_sets = [set(words(text)) for text in negatives]
    winning = collections.Counter(word for found in positive_sets for word in found)
    losing = collections.Counter(word for found in negative_sets for word in found)
    n_pos, n_neg = len(positive_sets), len(negative_sets)
    floor = max(2, math.ceil(min_share * n_pos))
    log_odds = {word: math.log((count + 1) / (n_pos + 2)) - math.log((losing[word] + 1) / (n_neg + 2))
                for word, count in winning.items() if count >= floor and word not in stop_words}
    kept = [word for word, value in log_odds.items() if value >= min_log_odds]
    return sorted(kept, key=lambda word: (-log_odds[word], word))[:k]


def concept_signatures(train: pd.DataFrame, k: int = 30) -> dict[int, list[str]]:
    """Per concept id, its signature words from a train split (`output`, `category`, `concept_id` columns)."""
    positive = train["category"].eq("positive")
    signatures = {}
    for concept_id in sorted(train.loc[positive, "concept_id"].unique()):
        own = positive & train["concept_id"].eq(concept_id)
        signatures[int(concept_id)] = signature_words(train.loc[own, "output"], train.loc[~own, "output"], k)
    return signatures


def lexical_score(text: str, signature: Iterable[str]) -> float:
    """The share (%) of the text's words that are signature words (0 for a text without words)."""
    found, wanted = words(text), set(signature)
    return 100.0 * sum(word in wanted for word in found) / len(found) if found else 0.0


def add_lexical_scores(generations: pd.DataFrame, signatures: Mapping[int, Iterable[str]],
                       text_column: str = "generation") -> pd.DataFrame:
    """`generations` plus COLUMN: each row scored against its concept's signature (NaN without one)."""
    scores = [lexical_score(text, signatures[int(cid)]) if int(cid) in signatures else np.nan
              for text, cid in zip(generations[text_column].fillna(""), generations["concept_id"])]
    return generations.assign(**{COLUMN: scores})
