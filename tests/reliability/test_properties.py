"""Property-based tests (hypothesis) for the parsers that read what users and servers send: concept files, judge
answers, run configs. Whatever the input, they return a value or raise their own error with a message — never
another exception, never a rating read from outside the answer's own JSON object."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axdata.concepts import ConceptFileError, load_concepts
from axeval.config import AxbenchConfig, ConfigError, apply_overrides
from axeval.judge import RatingParseError, parse_rating

# CI replays a fixed set of examples (a red CI is then reproducible); a developer's run explores new ones.
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=bool(os.environ.get("CI")), database=None)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=12)


@SETTINGS
@given(text=st.text(max_size=400), suffix=st.sampled_from([".csv", ".txt", ".jsonl", ".json"]))
def test_concept_readers_return_concepts_or_a_concept_file_error(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"concepts{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            concepts = load_concepts(path)
        except ConceptFileError as error:
            assert str(path) in str(error)
            return
        assert all(concept.concept.strip() for concept in concepts)


@SETTINGS
@given(value=json_values)
def test_concept_readers_on_any_json_lines(value) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "metadata.jsonl"
        path.write_text(json.dumps(value) + "\n", encoding="utf-8")
        try:
            load_concepts(path)
        except ConceptFileError:
            pass


@SETTINGS
@given(text=st.text(max_size=300))
def test_judge_parser_reads_a_rating_only_from_one_json_object(text: str) -> None:
    try:
        rating, reason = parse_rating(text)
    except RatingParseError:
        return
    assert rating in (0, 1, 2) and isinstance(reason, str)
    stripped = text.strip()
    assert stripped.startswith(("{", "```")) and stripped.endswith(("}", "```"))


@SETTINGS
@given(prose=st.text(max_size=50).filter(lambda t: t.strip()), rating=st.sampled_from([0, 1, 2]))
def test_a_rating_quoted_in_prose_is_never_accepted(prose: str, rating: int) -> None:
    answer = json.dumps({"reason": "r", "rating": rating})
    for text in (f"{prose} {answer}", f"{answer} {prose}"):
        try:
            parse_rating(text)
        except RatingParseError:
            continue
        assert text.strip() == answer or not prose.strip(), text


SECTIONS = ["run", "model", "llm", "data", "methods", "inference", "judge", "report"]
KEYS = ["seed", "layer", "name", "factors", "top_k", "temperature", "max_new_tokens", "n_resamples", "train",
        "settings", "max_usd", "max_tokens", "protocol", "num_of_examples", "nope"]


@SETTINGS
@given(raw=st.dictionaries(st.sampled_from([*SECTIONS, "other"]),
                           st.one_of(json_values, st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)),
                           max_size=3))
def test_config_loader_accepts_or_raises_a_config_error(raw) -> None:
    try:
        AxbenchConfig.from_dict(raw, "fuzz.yaml")
    except ConfigError as error:
        assert "fuzz.yaml" in str(error)


@SETTINGS
@given(override=st.one_of(
    st.text(max_size=40),
    st.builds(lambda section, key, value: f"{section}.{key}={value}", st.sampled_from(SECTIONS),
              st.sampled_from(KEYS), st.one_of(st.text(max_size=20), json_values.map(json.dumps)))))
def test_overrides_parse_or_raise_a_config_error(override: str) -> None:
    try:
        AxbenchConfig.from_dict(apply_overrides({}, [override]), "--set")
    except ConfigError:
        pass
