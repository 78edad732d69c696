import datasets
import pandas as pd
import pyarrow as pa
import pytest

from axdata.schema import (
    CATEGORIES,
    EMPTY_CONCEPT,
    GENRES,
    PROVENANCE_COLUMNS,
    SPLIT_COLUMNS,
    SPLITS,
    SchemaError,
    conform_table,
    features,
    table_from_frame,
    validate_frame,
)


def _train_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "input": ["q1", "q2", "q3"],
        "output": ["a1", "a2", "a3"],
        "output_concept": [EMPTY_CONCEPT, "cats", "cats"],
        "concept_genre": ["text", "text", "code"],
        "category": ["negative", "positive", "positive"],
        "dataset_category": ["instruction"] * 3,
        "concept_id": [-1, 0, 0],
    })


def _problems(df: pd.DataFrame, split: str = "train") -> SchemaError:
    with pytest.raises(SchemaError) as info:
        validate_frame(df, split, source="frame.parquet")
    assert info.value.split == split
    assert f"{split!r} split (frame.parquet)" in str(info.value)
    return info.value


def test_constants_and_every_split_has_features():
    assert EMPTY_CONCEPT == "EEEEE"
    assert GENRES == ("text", "code", "math")
    assert CATEGORIES == ("positive", "negative", "hard negative")
    assert set(SPLITS) == set(SPLIT_COLUMNS)
    for split in SPLITS:
        feats = features(split)
        assert isinstance(feats, datasets.Features)
        assert set(PROVENANCE_COLUMNS) <= set(feats)
    assert {"sae_link", "sae_id"} <= set(features("latent"))
    assert {"winning_output", "losing_output"} <= set(features("preference"))
    assert {"concept_id", "input_concept", "input_id", "original_prompt", "half"} <= set(features("steering"))


def test_axbench_frame_without_provenance_is_valid():
    validate_frame(_train_frame(), "train")


def test_missing_column_is_named():
    error = _problems(_train_frame().drop(columns=["category"]))
    assert error.problems[0][0] == "category" and "missing" in error.problems[0][1]
    assert "column 'category': missing" in str(error)


def test_wrong_dtype_is_named():
    df = _train_frame().assign(concept_id=[-1.0, 0.0, 0.5])
    error = _problems(df)
    assert error.problems == [("concept_id", error.problems[0][1])]
    assert "not an integer dtype" in error.problems[0][1]


def test_non_string_values_in_object_column():
    df = _train_frame().astype({"output": object})
    df.loc[1, "output"] = b"bytes"
    assert _problems(df).problems[0][0] == "output"


def test_values_outside_the_allowed_set():
    df = _train_frame().assign(category=["negative", "hard negative", "positive"],
                               concept_genre=["text", "poetry", "code"])
    error = _problems(df)
    message = str(error)
    assert "column 'category'" in message and "'hard negative'" in message  # not a train category
    assert "column 'concept_genre'" in message and "'poetry'" in message


def test_nulls_in_required_column():
    df = _train_frame().assign(input=["q1", None, "q3"])
    error = _problems(df)
    assert error.problems[0][0] == "input" and "1 null values (first at row 1)" in error.problems[0][1]


def test_shared_negative_rules():
    df = _train_frame().assign(output_concept=["cats", "cats", "cats"])
    assert "shared negatives" in _problems(df).problems[0][1]
    df = _train_frame().assign(concept_id=[-1, -1, 0], output_concept=[EMPTY_CONCEPT, EMPTY_CONCEPT, "cats"])
    assert "positive rows without a concept" in str(_problems(df))
    df = _train_frame().assign(concept_id=[-2, 0, 0])
    assert "below -1" in str(_problems(df))


def test_nullable_int_column_with_nulls_must_be_nullable_integer():
    df = _train_frame().assign(sample_seed=[1, None, 3])  # pandas makes this float64
    assert "Int64" in str(_problems(df))
    validate_frame(df.astype({"sample_seed": "Int64"}), "train")
    validate_frame(_train_frame().assign(sample_seed=None), "train")  # all-null: any dtype


def test_unknown_split():
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        validate_frame(_train_frame(), "dev")


def test_steering_half_values():
    df = pd.DataFrame({"dataset_name": ["AlpacaEval"] * 2, "concept_id": [0, 0], "input_concept": ["cats"] * 2,
                       "input_id": [0, 5], "original_prompt": ["p0", "p5"], "half": ["selection", "test"]})
    assert "column 'half'" in str(_problems(df, "steering"))


def test_conform_keeps_values_and_extra_columns():
    df = _train_frame().assign(extra_score=[0.5, 1.5, 2.5])
    table = table_from_frame(df, "train")
    names = table.column_names
    assert names[:7] == list(_train_frame().columns)
    assert names[7:10] == list(PROVENANCE_COLUMNS) and names[-1] == "extra_score"
    assert table.column("template_hash").null_count == 3
    pd.testing.assert_frame_equal(table.to_pandas()[df.columns], df)
    assert datasets.Features.from_arrow_schema(table.schema)["sample_seed"] == datasets.Value("int64")


def test_conform_refuses_a_lossy_cast():
    table = pa.table({**{c: pa.array(v) for c, v in _train_frame().items()},
                      "sample_seed": pa.array([1.5, None, 2.0])})
    with pytest.raises(pa.ArrowInvalid):
        conform_table(table, "train")
