"""Import of AxBench-format data, checked on the real Concept10 files in ../shared (skipped without them)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from axdata.builders import list_configs, list_splits, load_split, read_concepts, read_split, split_files
from axdata.builders.axbench_import import AxBenchImportError, import_axbench, read_axbench
from axdata.concepts import load_concepts
from axdata.schema import EMPTY_CONCEPT, PROVENANCE_COLUMNS, SchemaError
from axeval.cli.data import data_app

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "axbench"
CONCEPT10 = SHARED / "concept10"
LATENT_ROWS = {"2b_l10": 770, "2b_l20": 755, "9b_l20": 760, "9b_l31": 768}

needs_shared = pytest.mark.skipif(not CONCEPT10.is_dir(),
                                  reason=f"shared AxBench Concept10 data not found at {CONCEPT10}")


def _setting(name: str) -> Path:
    return CONCEPT10 / f"prod_{name}_v1"


def _hub_layout(tmp_path: Path, name: str) -> Path:
    """A pyvene/axbench-concept10-style folder `{2b,9b}/l{L}/{train,test}/data.parquet` built from the repo files."""
    model, layer = name.split("_")
    root = tmp_path / "hub" / model / layer
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    shutil.copy(_setting(name) / "generate" / "train_data.parquet", root / "train" / "data.parquet")
    shutil.copy(_setting(name) / "inference" / "latent_eval_data.parquet", root / "test" / "data.parquet")
    return root


@needs_shared
@pytest.mark.parametrize("name", sorted(LATENT_ROWS))
def test_import_every_concept10_setting(tmp_path, name):
    report = import_axbench(_setting(name), tmp_path, name)
    assert report.layout == "repository"
    assert report.rows == {"train": 936, "latent": LATENT_ROWS[name], "steering": 100}
    assert report.categories["train"] == {"positive": 720, "negative": 216}
    assert report.categories["latent"]["positive"] == 360 and report.categories["latent"]["negative"] == 360
    assert sum(report.categories["latent"].values()) == LATENT_ROWS[name]
    assert report.concepts == 10 and sum(report.genres.values()) == 10
    assert report.shared_negatives == 216
    assert set(report.source_hashes) == {"generate/train_data.parquet", "generate/metadata.jsonl",
                                         "inference/latent_eval_data.parquet"}

    train = read_split(tmp_path, name, "train")
    shared = train[train["concept_id"] == -1]
    assert len(shared) == 216 and set(shared["output_concept"]) == {EMPTY_CONCEPT}
    assert shared["concept_genre"].value_counts().to_dict() == {"text": 72, "math": 72, "code": 72}

    metadata = [json.loads(line) for line in (_setting(name) / "generate" / "metadata.jsonl").read_text().splitlines()]
    written = [json.loads(line) for line in (tmp_path / name / "concepts.jsonl").read_text().splitlines()]
    assert written == metadata


@needs_shared
def test_import_builds_the_steering_split_as_axbench_samples_it(tmp_path):
    """AxBench data has no steering split: the import samples it per concept (seed = concept id), halves it and
    records how in the provenance, so `axbench infer steer` runs on imported data."""
    import numpy as np

    from axdata.builders import read_provenance
    from axdata.generation.pools import load_pool

    import_axbench(_setting("2b_l20"), tmp_path, "c10", steering_num_of_examples=4)
    steering = read_split(tmp_path, "c10", "steering")
    assert len(steering) == 40 and steering.groupby("concept_id").size().eq(4).all()
    pool = load_pool({"general": "shipped"}).general
    first = steering[steering["concept_id"] == 3]
    picks = np.random.RandomState(3).choice(len(pool), size=4, replace=False)
    assert list(first["original_prompt"]) == [pool[int(i)] for i in picks]
    assert list(first["half"]) == ["selection", "selection", "heldout", "heldout"]
    recorded = read_provenance(tmp_path)["steering_split"]["c10"]
    assert recorded["built_on_import"] and recorded["steering_num_of_examples"] == 4
    assert recorded["instructions"] == "shipped" and recorded["pool_fingerprint"]


@needs_shared
def test_2b_l20_latent_categories(tmp_path):
    report = import_axbench(_setting("2b_l20"), tmp_path, "gemma-2-2b-it-l20")
    assert report.categories["latent"] == {"positive": 360, "negative": 360, "hard negative": 35}
    assert "latent: 755 rows (positive 360, negative 360, hard negative 35)" in report.summary()


@needs_shared
@pytest.mark.parametrize("split, source", [("train", "generate/train_data.parquet"),
                                           ("latent", "inference/latent_eval_data.parquet")])
def test_lossless_round_trip_through_datasets(tmp_path, split, source):
    import_axbench(_setting("2b_l20"), tmp_path / "out", "2b-l20")
    original = pd.read_parquet(_setting("2b_l20") / source)
    dataset = load_split(tmp_path / "out", "2b-l20", split, cache_dir=tmp_path / "hf-cache")
    loaded = dataset.to_pandas()
    assert list(loaded.columns) == list(original.columns) + list(PROVENANCE_COLUMNS)
    pd.testing.assert_frame_equal(loaded[original.columns], original)
    assert loaded[list(PROVENANCE_COLUMNS)].isna().all().all()
    assert dataset.features["concept_id"].dtype == "int64"


@needs_shared
def test_extra_columns_and_their_types_survive(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(_setting("2b_l10"), source)
    path = source / "generate" / "train_data.parquet"
    table = pq.read_table(path)
    scores = pa.array([[float(i), 0.5] for i in range(table.num_rows)], pa.list_(pa.float32()))
    pq.write_table(table.append_column("judge_scores", scores), path)
    import_axbench(source, tmp_path / "out", "c")
    written = pq.read_table(split_files(tmp_path / "out", "c", "train")[0])
    assert written.column_names[-1] == "judge_scores"
    assert written.schema.field("judge_scores").type == pa.list_(pa.float32())
    assert written.column("judge_scores").combine_chunks().equals(scores)
    assert load_split(tmp_path / "out", "c", "train", cache_dir=tmp_path / "hf").features["judge_scores"]


@needs_shared
@pytest.mark.parametrize("name", sorted(LATENT_ROWS))
def test_hub_layout_matches_repository_layout(tmp_path, name):
    hub = _hub_layout(tmp_path, name)
    from_hub = read_axbench(hub)
    from_repo = read_axbench(_setting(name))
    assert from_hub.source.layout == "hub"
    # concepts read off the data equal the repository's metadata.jsonl
    assert [(c.concept_id, c.concept, c.ref, c.genres) for c in from_hub.concepts] == \
           [(c.concept_id, c.concept, c.ref, c.genres) for c in from_repo.concepts]
    for split in ("train", "latent"):
        assert from_hub.tables[split].equals(from_repo.tables[split])
    report = import_axbench(hub, tmp_path / "out", name, steering_num_of_examples=None)
    assert report.rows == {"train": 936, "latent": LATENT_ROWS[name]}


@needs_shared
def test_hub_root_with_several_settings_is_refused(tmp_path):
    _hub_layout(tmp_path, "2b_l20")
    _hub_layout(tmp_path, "9b_l31")
    with pytest.raises(AxBenchImportError, match=r"several settings \(2b/l20, 9b/l31\)"):
        read_axbench(tmp_path / "hub")


@needs_shared
def test_reimport_replaces_shards_and_keeps_other_configs(tmp_path):
    out = tmp_path / "out"
    import_axbench(_setting("2b_l10"), out, "a")
    stale = out / "a" / "train-00000-of-00002.parquet"
    shutil.copy(split_files(out, "a", "train")[0], stale)
    import_axbench(_setting("2b_l20"), out, "b")
    import_axbench(_setting("2b_l10"), out, "a")
    assert not stale.exists()
    assert list_configs(out) == ["a", "b"] and list_splits(out, "b") == ["train", "latent", "steering"]
    assert read_concepts(out, "a") == load_concepts(_setting("2b_l10") / "generate" / "metadata.jsonl")
    assert not list(out.rglob("*.tmp"))


@needs_shared
def test_mismatched_metadata_is_refused(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(_setting("2b_l10"), source)
    shutil.copy(_setting("2b_l20") / "generate" / "metadata.jsonl", source / "generate" / "metadata.jsonl")
    with pytest.raises(AxBenchImportError, match="different runs"):
        read_axbench(source)


@needs_shared
def test_invalid_source_rows_name_file_split_and_column(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(_setting("2b_l10"), source)
    path = source / "inference" / "latent_eval_data.parquet"
    frame = pd.read_parquet(path)
    frame.loc[3, "category"] = "neutral"
    frame.to_parquet(path)
    with pytest.raises(SchemaError) as info:
        read_axbench(source)
    assert info.value.split == "latent" and str(path) in str(info.value) and "'category'" in str(info.value)


def test_missing_or_unknown_sources(tmp_path):
    with pytest.raises(AxBenchImportError, match="is not a directory"):
        read_axbench(tmp_path / "nope")
    with pytest.raises(AxBenchImportError, match="neither generate/train_data.parquet"):
        read_axbench(tmp_path)
    (tmp_path / "generate").mkdir()
    pd.DataFrame({"input": ["x"]}).to_parquet(tmp_path / "generate" / "train_data.parquet")
    with pytest.raises(AxBenchImportError, match="metadata.jsonl is missing"):
        read_axbench(tmp_path)


def test_load_split_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No 'latent' shards .*\(splits present: none\)"):
        load_split(tmp_path, "c", "latent")


@needs_shared
def test_cli_import_and_info(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(data_app, ["import", str(_setting("2b_l20")), "--out", str(out), "--dataset-config", "2b-l20"])
    assert result.exit_code == 0, result.output
    assert "936" in result.output and "755" in result.output and "35" in result.output
    assert "concepts: 10" in result.output and "shared negatives: 216" in result.output

    result = runner.invoke(data_app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("config 2b-l20", "train", "latent", "936", "755", "360", "concepts: 10 (text 8, code 1, math 1)"):
        assert text in result.output


def test_cli_errors_exit_cleanly(tmp_path):
    runner = CliRunner()
    result = runner.invoke(data_app, ["import", str(tmp_path), "--out", str(tmp_path / "o"), "--dataset-config", "c"])
    assert result.exit_code == 1 and "Import failed" in result.output and "neither" in result.output
    result = runner.invoke(data_app, ["import", str(tmp_path), "--out", str(tmp_path / "o"), "--dataset-config", "a/b"])
    assert result.exit_code == 1 and "Config name 'a/b'" in result.output
    result = runner.invoke(data_app, ["info", str(tmp_path)])
    assert result.exit_code == 1 and "holds no dataset configs" in result.output


def test_cli_import_positional_form_defaults_the_config_name_and_info_shows_provenance(tmp_path):
    if not SHARED.exists():
        pytest.skip(f"AxBench data not found at {SHARED} (the ../shared folder beside the repository)")
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(data_app, ["import", str(_setting("2b_l20")), str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "prod_2b_l20_v1" / "train-00000-of-00001.parquet").exists()
    info = runner.invoke(data_app, ["info", str(out)], terminal_width=200)
    assert info.exit_code == 0 and "provenance" in info.output and "source_hashes" in info.output
    assert runner.invoke(data_app, ["import", str(_setting("2b_l20"))]).exit_code == 2
