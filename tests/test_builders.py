"""The config layout (one column set per config), the `datasets` builder over a local directory, the dataset card."""

from __future__ import annotations

from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCard

from axdata.builders import list_configs, list_splits, read_split, split_files, write_concepts, write_split
from axdata.builders.builder import (
    AxBenchDataset,
    builder_class,
    config_schema,
    from_config_layout,
    load_builder,
    to_config_layout,
)
from axdata.builders.hub import ConfigSummary, SplitSummary, dataset_card
from axdata.concepts import Concept
from axdata.schema import SchemaError, table_from_frame

AXBENCH_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "axbench"
CONCEPT10 = AXBENCH_DATA / "concept10"
CONCEPTS = [Concept(0, "golden retrievers", "ref:0", ("text",)), Concept(1, "prime numbers", None, ("math",))]


def _core(rows: list[tuple[str, str, str, int]], genre: str = "text") -> dict[str, list]:
    """Columns shared by train / latent / latent_imbalance from (input, category, output_concept, concept_id)."""
    return {
        "input": [row[0] for row in rows],
        "output": [f"answer to {row[0]}" for row in rows],
        "output_concept": [row[2] for row in rows],
        "concept_genre": [genre] * len(rows),
        "category": [row[1] for row in rows],
        "dataset_category": ["instruction"] * len(rows),
        "concept_id": [row[3] for row in rows],
    }


def synthetic_frames(n: int = 6, *, full: bool = True) -> dict[str, pd.DataFrame]:
    """Every split with its own columns; `full=False` gives only train and latent (like AxBench imports)."""
    train = pd.DataFrame(_core([(f"t{i}", "positive" if i % 3 else "negative",
                                 CONCEPTS[i % 2].concept if i % 3 else "EEEEE", i % 2 if i % 3 else -1)
                                for i in range(n)]))
    train["template_hash"] = "tmpl-abc123"
    train["generator_model"] = "gpt-test"
    train["sample_seed"] = pd.array(range(n), dtype="Int64")
    latent = pd.DataFrame(_core([(f"l{i}", ("positive", "negative", "hard negative")[i % 3],
                                  "word//meaning" if i % 3 == 2 else CONCEPTS[i % 2].concept, i % 2)
                                 for i in range(n)]))
    latent["sae_link"] = [None if i % 2 else "https://example.org/0" for i in range(n)]
    latent["sae_id"] = pd.array([None if i % 2 else i for i in range(n)], dtype="Int64")
    frames = {"train": train, "latent": latent}
    if full:
        frames["latent_imbalance"] = pd.DataFrame(_core([(f"i{i}", "negative", "EEEEE", i % 2) for i in range(2 * n)]))
        frames["steering"] = pd.DataFrame({
            "dataset_name": ["demo-pool"] * n,
            "concept_id": [i % 2 for i in range(n)],
            "input_concept": [CONCEPTS[i % 2].concept for i in range(n)],
            "input_id": list(range(n)),
            "original_prompt": [f"prompt {i}" for i in range(n)],
            "half": ["selection" if i < n // 2 else "heldout" for i in range(n)],
        })
        preference = pd.DataFrame(_core([(f"p{i}", "positive", CONCEPTS[i % 2].concept, i % 2) for i in range(n)]))
        frames["preference"] = preference.rename(columns={"output": "winning_output"}).assign(
            losing_output=[f"plain {i}" for i in range(n)])
    return frames


def make_dataset(root: Path, configs: dict[str, bool] | None = None, n: int = 6) -> Path:
    """A dataset directory in our layout; `configs` maps config name → all five splits (True) or train+latent."""
    for config, full in (configs or {"tiny-a-l2": True, "tiny-b-l3": False}).items():
        for split, frame in synthetic_frames(n, full=full).items():
            write_split(table_from_frame(frame, split), root, config, split)
        write_concepts(CONCEPTS, root, config)
    return root


def assert_matches_local(dataset: datasets.Dataset, local: pa.Table) -> None:
    """The loaded split holds the local table's rows and values; its other columns (from sibling splits) are null."""
    loaded = dataset.data.table
    assert loaded.num_rows == local.num_rows
    for name in local.column_names:
        assert loaded.column(name).to_pylist() == local.column(name).to_pylist(), name
    for name in set(loaded.column_names) - set(local.column_names):
        assert loaded.column(name).null_count == loaded.num_rows, name


def test_config_layout_restores_every_split_exactly(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    tables = {split: pq.read_table(split_files(root, "tiny-a-l2", split)) for split in list_splits(root, "tiny-a-l2")}
    schema = config_schema({split: table.schema for split, table in tables.items()}, source="tiny-a-l2")
    # union in split order: train's columns first, then each later split's new ones
    assert schema.names[:10] == tables["train"].column_names
    assert {"sae_link", "winning_output", "losing_output", "half", "input_id"} <= set(schema.names)
    features = datasets.Features.from_arrow_schema(schema)
    assert features["sae_id"] == datasets.Value("int64") and features["half"] == datasets.Value("string")
    for split, table in tables.items():
        published = to_config_layout(table, schema)
        assert published.column_names == schema.names
        assert datasets.Features.from_arrow_schema(published.schema) == features
        restored = from_config_layout(published, split, source=split)
        assert restored.equals(table) and restored.schema.metadata == table.schema.metadata


def test_config_schema_names_conflicting_column_types() -> None:
    train = pa.schema([("input", pa.string()), ("extra", pa.int64())])
    latent = pa.schema([("input", pa.string()), ("extra", pa.string())])
    with pytest.raises(SchemaError, match=r"'extra'.*'train' split of cfg.*cast the column"):
        config_schema({"train": train, "latent": latent}, source="cfg")


def test_foreign_shards_keep_their_columns_with_values() -> None:
    frame = synthetic_frames(full=False)["train"]
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column("sae_link", pa.nulls(len(frame), pa.string()))
    restored = from_config_layout(table.replace_schema_metadata(None), "train", source="foreign.parquet")
    assert "sae_link" not in restored.column_names
    assert restored.column("input").to_pylist() == frame["input"].tolist()


def test_values_in_a_dropped_column_are_an_error() -> None:
    table = pa.table({"input": ["a"], "sae_link": [None]})
    schema = config_schema({"train": pa.schema([("input", pa.string())]), "latent": table.schema}, source="cfg")
    published = to_config_layout(pa.table({"input": ["a"]}), schema)
    tampered = published.set_column(1, "sae_link", pa.array(["x"])).replace_schema_metadata(published.schema.metadata)
    with pytest.raises(ValueError, match=r"shard\.parquet: columns \['sae_link'\] hold values.*re-push"):
        from_config_layout(tampered, "train", source="shard.parquet")


def test_builder_builds_every_split_of_each_config(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    cls = builder_class(root)
    assert issubclass(cls, AxBenchDataset)
    assert [config.name for config in cls.BUILDER_CONFIGS] == list_configs(root) == ["tiny-a-l2", "tiny-b-l3"]
    for config in list_configs(root):
        builder = load_builder(root, config, cache_dir=tmp_path / "cache")
        assert str(builder.config.version) == str(AxBenchDataset.VERSION) == "1.0.0"
        builder.download_and_prepare()
        assert list(builder.info.splits) == list_splits(root, config)
        for split in list_splits(root, config):
            dataset = builder.as_dataset(split=split)
            assert dataset.features == builder.info.features  # one Features per config, as on the Hub
            assert_matches_local(dataset, pq.read_table(split_files(root, config, split)))


def test_builder_cache_follows_the_data(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"tiny": False})
    first = load_builder(root, cache_dir=tmp_path / "cache")  # a single config is the default
    first.download_and_prepare()
    frame = synthetic_frames(n=9, full=False)["train"]
    write_split(table_from_frame(frame, "train"), root, "tiny", "train")
    second = load_builder(root, cache_dir=tmp_path / "cache")
    second.download_and_prepare()
    assert second.cache_dir != first.cache_dir
    assert second.as_dataset(split="train").num_rows == 9


def test_builder_errors_name_the_fix(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"Config 'nope' is not in .*tiny-a-l2, tiny-b-l3"):
        load_builder(root, "nope")
    with pytest.raises(ValueError, match="several configs"):
        load_builder(root)
    with pytest.raises(FileNotFoundError, match="no dataset configs"):
        builder_class(tmp_path / "empty")
    with pytest.raises(ValueError, match="has no data_dir"):
        AxBenchDataset(config_name="tiny-a-l2", cache_dir=str(tmp_path / "cache"))


def test_dataset_card_front_matter_and_body() -> None:
    features = datasets.Features({"input": datasets.Value("string"), "sae_id": datasets.Value("int64")})
    configs = [
        ConfigSummary("gemma-2b-l20", [SplitSummary("train", 10, 1, 100, {"positive": 7, "negative": 3}),
                                       SplitSummary("steering", 4, 2, 50, {})], 2, features, ["gpt-test"], ["abc"]),
        ConfigSummary("gemma-9b-l20", [SplitSummary("latent", 5, 1, 70, {"hard negative": 5})], None, features),
    ]
    text = dataset_card("org/demo", configs, version="2.1.0",
                        provenance={"generator_models": ["gpt-test"], "source_hashes": {"a.parquet": "ff00"}})
    card = DatasetCard(text)
    data = card.data.to_dict()
    assert data["version"] == "2.1.0" and data["license"] == "cc-by-4.0"
    assert data["task_categories"] == ["text-classification", "text-generation"]
    assert [c["config_name"] for c in data["configs"]] == ["gemma-2b-l20", "gemma-9b-l20"]
    assert data["configs"][0]["default"] is True
    assert data["configs"][0]["data_files"][1] == {"split": "steering", "path": "gemma-2b-l20/steering-*.parquet"}
    infos = {info["config_name"]: info for info in data["dataset_info"]}
    assert [s["num_examples"] for s in infos["gemma-2b-l20"]["splits"]] == [10, 4]
    assert infos["gemma-9b-l20"]["features"] == [{"name": "input", "dtype": "string"}, {"name": "sae_id", "dtype": "int64"}]
    assert data["provenance"]["source_hashes"] == {"a.parquet": "ff00"}
    body = card.text
    assert 'load_dataset("org/demo", "gemma-2b-l20", split="train", revision="v2.1.0")' in body
    assert "| `train` | 10 | 7 | 3 | – | 1 |" in body
    assert "| `steering` | 4 | – | – | – | 2 |" in body
    assert "`half`" in body and "@inproceedings{wu2025axbench" in body
    assert yaml.safe_load(text.split("---")[1])["size_categories"] == ["n<1K"]


@pytest.mark.skipif(not CONCEPT10.is_dir(), reason=f"AxBench Concept10 data not found at {CONCEPT10}")
def test_builder_over_imported_concept10(tmp_path: Path) -> None:
    from axdata.builders.axbench_import import import_axbench

    root = tmp_path / "ds"
    import_axbench(CONCEPT10 / "prod_2b_l20_v1", root, "prod_2b_l20_v1")
    builder = load_builder(root, "prod_2b_l20_v1", cache_dir=tmp_path / "cache")
    builder.download_and_prepare()
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {"train": 936, "latent": 755,
                                                                                    "steering": 100}
    latent = builder.as_dataset(split="latent")
    assert_matches_local(latent, pq.read_table(split_files(root, "prod_2b_l20_v1", "latent")))
    train = builder.as_dataset(split="train")
    assert set(train.unique("sae_link")) == {None}
    assert train.to_pandas()[read_split(root, "prod_2b_l20_v1", "train").columns].shape == (936, 10)
