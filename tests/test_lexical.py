"""The judge-free lexical concept score."""

from __future__ import annotations

import pandas as pd
import pytest

from axeval.lexical import add_lexical_scores, concept_signatures, lexical_score, signature_words


def test_signature_words_are_what_positives_share_and_negatives_lack():
    positives = ["the ocean waves", "ocean fish swim", "the whale in the ocean", "fish and waves"]
    negatives = ["the cat sat", "the dog ran", "a cat and a dog"]
    signature = signature_words(positives, negatives, k=3)
    assert signature[0] == "ocean" and set(signature) <= {"ocean", "waves", "fish"}
    assert "the" not in signature  # common to both sides
    assert signature_words(["one ocean"], negatives) == []  # a word must appear in at least two positives


def test_scores_are_percentages_of_words_and_nan_without_a_signature():
    assert lexical_score("Ocean, ocean and sky!", ["ocean"]) == pytest.approx(50.0)
    assert lexical_score("", ["ocean"]) == 0.0
    train = pd.DataFrame({"concept_id": [0, 0, 1, 1, -1, -1], "category": ["positive"] * 4 + ["negative"] * 2,
                          "output": ["sea waves", "sea fish", "pan fry", "pan oven", "hello there", "good day"]})
    signatures = concept_signatures(train, k=1)
    assert signatures == {0: ["sea"], 1: ["pan"]}
    generations = pd.DataFrame({"concept_id": [0, 1, 7], "generation": ["sea sea", "sea", "pan"]})
    scored = add_lexical_scores(generations, signatures)["lexical_score"].tolist()
    assert scored[:2] == [100.0, 0.0] and pd.isna(scored[2])
