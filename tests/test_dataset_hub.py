"""Push / pull of dataset directories against the local Hub stand-in, read back with plain `datasets`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import typer
from fixtures_hub import HubEnv
from huggingface_hub import DatasetCard, HfApi
from test_builders import CONCEPT10, assert_matches_local, make_dataset, synthetic_frames
from typer.testing import CliRunner

from axdata.builders import (
    list_configs,
    list_splits,
    read_concepts,
    read_provenance,
    read_split,
    split_files,
    write_provenance,
    write_split,
)
from axdata.builders.hub import pull_dataset, push_dataset
from axdata.schema import table_from_frame
from axeval.cli.data_hub import pull, push


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _assert_same_dataset(local: Path, pulled: Path) -> None:
    assert list_configs(pulled) == list_configs(local)
    for config in list_configs(local):
        assert list_splits(pulled, config) == list_splits(local, config)
        for split in list_splits(local, config):
            assert pq.read_table(split_files(pulled, config, split)).equals(
                pq.read_table(split_files(local, config, split)), check_metadata=True)
        assert read_concepts(pulled, config) == read_concepts(local, config)


def test_synthetic_round_trip(hub_env: HubEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    local = make_dataset(tmp_path / "ds", n=40)
    write_provenance({"generator_model": "gpt-test", "seeds": {"train": 7}, "cost_usd": 0.01}, local)
    repo_id = hub_env.repo_id("synthetic")

    report = push_dataset(local, repo_id, max_shard_size="4KB")
    assert report.created_commit and report.tag == "v1.0.0" and report.created_tag
    api = HfApi()
    repo_files = api.list_repo_files(repo_id, repo_type="dataset")
    assert "tiny-a-l2/concepts.jsonl" in repo_files and "README.md" in repo_files
    train_shards = sorted(f for f in repo_files if f.startswith("tiny-a-l2/train-"))
    assert len(train_shards) > 1 and train_shards[-1].endswith(f"-of-{len(train_shards):05d}.parquet")
    assert [ref.name for ref in api.list_repo_refs(repo_id, repo_type="dataset").tags] == ["v1.0.0"]

    # every split of every config, with plain datasets
    for config in list_configs(local):
        for split in list_splits(local, config):
            loaded = datasets.load_dataset(repo_id, config, split=split)
            assert_matches_local(loaded, pq.read_table(split_files(local, config, split)))

    card = DatasetCard.load(repo_id, repo_type="dataset").data.to_dict()
    assert [c["config_name"] for c in card["configs"]] == ["tiny-a-l2", "tiny-b-l3"]
    assert card["version"] == "1.0.0"
    assert card["provenance"]["generator_model"] == "gpt-test"
    assert card["provenance"]["template_hashes"] == ["tmpl-abc123"]  # read off the data's provenance column
    assert card["provenance"]["generator_models"] == ["gpt-test"]
    splits = {s["name"]: s["num_examples"] for i in card["dataset_info"] if i["config_name"] == "tiny-a-l2"
              for s in i["splits"]}
    assert splits == {"train": 40, "latent": 40, "latent_imbalance": 80, "steering": 40, "preference": 40}

    pulled = tmp_path / "pulled"
    pull_report = pull_dataset(repo_id, pulled, revision="v1.0.0")
    assert pull_report.version == "1.0.0" and pull_report.commit_oid == report.commit_oid
    assert pull_report.configs["tiny-b-l3"] == {"train": 40, "latent": 40}
    assert len(split_files(pulled, "tiny-a-l2", "train")) == len(train_shards)  # shards come back one for one
    for config in list_configs(local):
        for split in list_splits(local, config):
            assert read_split(pulled, config, split).equals(read_split(local, config, split))
    assert read_provenance(pulled)["cost_usd"] == 0.01

    # the token goes to the server only, never into the card, the files or the logs
    everything = b"".join(_files(pulled).values()) + caplog.text.encode()
    assert hub_env.token.encode() not in everything


def test_plain_datasets_in_a_fresh_process(hub_env: HubEnv, tmp_path: Path) -> None:
    """What a user without axbench runs: only `datasets`, pointed at the Hub by the environment."""
    local = make_dataset(tmp_path / "ds")
    repo_id = hub_env.repo_id("plain")
    push_dataset(local, repo_id)
    script = (
        "import json, sys, datasets\n"
        f"ds = datasets.load_dataset({repo_id!r}, 'tiny-a-l2', split='preference', revision='v1.0.0')\n"
        "ours = sorted(m for m in sys.modules if m.split('.')[0] in ('axdata', 'axmethods', 'axeval'))\n"
        "print(json.dumps({'rows': ds.num_rows, 'first': ds[0]['winning_output'], 'ours': ours}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {"rows": 6, "first": read_split(local, "tiny-a-l2", "preference")["winning_output"][0], "ours": []}


def test_same_push_twice_makes_no_commit(hub_env: HubEnv, tmp_path: Path) -> None:
    local = make_dataset(tmp_path / "ds")
    repo_id = hub_env.repo_id("idempotent")
    first = push_dataset(local, repo_id)
    api = HfApi()
    commits = len(api.list_repo_commits(repo_id, repo_type="dataset"))
    again = push_dataset(local, repo_id)
    assert not again.created_commit and not again.created_tag and again.commit_oid == first.commit_oid
    untagged = push_dataset(local, repo_id, tag=False)
    assert not untagged.created_commit and untagged.commit_oid == first.commit_oid
    assert len(api.list_repo_commits(repo_id, repo_type="dataset")) == commits


def test_versions_are_revisions(hub_env: HubEnv, tmp_path: Path) -> None:
    local = make_dataset(tmp_path / "ds", {"tiny": False}, n=6)
    repo_id = hub_env.repo_id("versions")
    push_dataset(local, repo_id, version="1.0.0", max_shard_size="2KB")
    # v2: fewer train rows, fewer shards — the old shards must not linger at the new revision
    write_split(table_from_frame(synthetic_frames(3, full=False)["train"], "train"), local, "tiny", "train")
    second = push_dataset(local, repo_id, version="2.0.0")
    assert second.created_commit and second.tag == "v2.0.0"
    api = HfApi()
    assert sorted(f for f in api.list_repo_files(repo_id, repo_type="dataset") if f.endswith(".parquet")) == [
        "tiny/latent-00000-of-00001.parquet", "tiny/train-00000-of-00001.parquet"]
    assert datasets.load_dataset(repo_id, "tiny", split="train", revision="v1.0.0").num_rows == 6
    assert datasets.load_dataset(repo_id, "tiny", split="train", revision="v2.0.0").num_rows == 3
    assert datasets.load_dataset(repo_id, "tiny", split="train").num_rows == 3
    assert HfApi().dataset_info(repo_id, revision="v1.0.0").card_data.version == "1.0.0"

    # a version is immutable: other content under an existing tag is refused, before anything is uploaded
    head = api.repo_info(repo_id, repo_type="dataset").sha
    write_split(table_from_frame(synthetic_frames(4, full=False)["train"], "train"), local, "tiny", "train")
    with pytest.raises(ValueError, match=r"already has tag v2\.0\.0.*--version 2\.0\.1"):
        push_dataset(local, repo_id, version="2.0.0")
    assert api.repo_info(repo_id, repo_type="dataset").sha == head

    # a branch: main is untouched
    branch = push_dataset(local, repo_id, version="2.1.0", revision="next")
    assert branch.revision == "next" and api.repo_info(repo_id, repo_type="dataset").sha == head
    assert datasets.load_dataset(repo_id, "tiny", split="train", revision="next").num_rows == 4


def test_push_and_pull_errors(hub_env: HubEnv, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no dataset configs"):
        push_dataset(tmp_path / "nothing", hub_env.repo_id("x"))
    local = make_dataset(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"Version 'one' is not MAJOR\.MINOR\.PATCH"):
        push_dataset(local, hub_env.repo_id("x"), version="one")
    repo_id = hub_env.repo_id("errors")
    push_dataset(local, repo_id)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        pull_dataset(repo_id, tmp_path / "busy")
    other = hub_env.repo_id("not-ours")
    api = HfApi()
    api.create_repo(other, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data.csv", repo_id=other, repo_type="dataset")
    with pytest.raises(FileNotFoundError, match="was not pushed with `axbench data push`"):
        pull_dataset(other, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_cli_push_and_pull(hub_env: HubEnv, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("push")(push)
    app.command("pull")(pull)
    local = make_dataset(tmp_path / "ds")
    repo_id = hub_env.repo_id("cli")
    runner = CliRunner()
    result = runner.invoke(app, ["push", str(local), repo_id, "--version", "0.1.0"])
    assert result.exit_code == 0, result.output
    assert "tag v0.1.0: created" in result.output and "tiny-a-l2/concepts.jsonl" in result.output
    assert f"{hub_env.endpoint}/datasets/{repo_id}" in result.output
    result = runner.invoke(app, ["pull", repo_id, "--out", str(tmp_path / "pulled"), "--revision", "v0.1.0"])
    assert result.exit_code == 0, result.output
    assert "version 0.1.0" in result.output
    _assert_same_dataset(local, tmp_path / "pulled")
    result = runner.invoke(app, ["pull", repo_id, str(tmp_path / "positional")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["pull", repo_id, str(tmp_path / "pulled")])
    assert result.exit_code == 1 and "not an empty directory" in result.output
    result = runner.invoke(app, ["push", str(tmp_path / "missing"), repo_id])
    assert result.exit_code == 1 and "holds no dataset configs" in result.output
    assert hub_env.token not in result.output


@pytest.mark.skipif(not CONCEPT10.is_dir(), reason=f"AxBench Concept10 data not found at {CONCEPT10}")
def test_concept10_round_trip(hub_env: HubEnv, tmp_path: Path) -> None:
    from axdata.builders.axbench_import import import_axbench

    local = tmp_path / "ds"
    hashes = {}
    for setting in ("prod_2b_l20_v1", "prod_9b_l20_v1"):
        hashes.update({f"{setting}/{k}": v for k, v in
                       import_axbench(CONCEPT10 / setting, local, setting,
                                      steering_num_of_examples=None).source_hashes.items()})
    write_provenance({"source": "axbench concept10", "source_hashes": hashes}, local)
    repo_id = hub_env.repo_id("concept10")
    report = push_dataset(local, repo_id)

    for config in ("prod_2b_l20_v1", "prod_9b_l20_v1"):
        for split in ("train", "latent"):
            loaded = datasets.load_dataset(repo_id, config, split=split)
            assert_matches_local(loaded, pq.read_table(split_files(local, config, split)))
            expected = read_split(local, config, split)
            assert loaded.to_pandas()[list(expected.columns)].equals(expected)

    card = DatasetCard.load(repo_id, repo_type="dataset")
    assert [c["config_name"] for c in card.data.configs] == ["prod_2b_l20_v1", "prod_9b_l20_v1"]
    assert card.data.to_dict()["provenance"]["source_hashes"] == hashes
    assert "| `latent` | 755 | 360 | 360 | 35 | 1 |" in card.text
    api = HfApi()
    assert "v1.0.0" in [ref.name for ref in api.list_repo_refs(repo_id, repo_type="dataset").tags]

    pulled = tmp_path / "pulled"
    pull_dataset(repo_id, pulled, revision="v1.0.0")
    local_files = _files(local)
    assert {name: data for name, data in _files(pulled).items() if name in local_files} == local_files
    _assert_same_dataset(local, pulled)

    # a second version beside the first; both stay loadable
    write_split(pq.read_table(split_files(local, "prod_2b_l20_v1", "train")).slice(0, 100), local, "prod_2b_l20_v1",
                "train")
    second = push_dataset(local, repo_id, version="1.1.0")
    assert second.commit_oid != report.commit_oid
    assert datasets.load_dataset(repo_id, "prod_2b_l20_v1", split="train", revision="v1.0.0").num_rows == 936
    assert datasets.load_dataset(repo_id, "prod_2b_l20_v1", split="train", revision="v1.1.0").num_rows == 100


def test_a_card_with_a_yaml_alias_bomb_is_refused_without_expanding_it(hub_env: HubEnv, tmp_path: Path) -> None:
    import resource

    local = make_dataset(tmp_path / "ds")
    repo_id = hub_env.repo_id("bomb")
    push_dataset(local, repo_id)
    # 9 levels of 9 aliases: ~387 million leaves if expanded (safe_load would take gigabytes).
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = "---\nprovenance:\n" + "\n".join(f"  {line}" for line in levels) + "\n---\n# card\n"
    assert len(bomb) < 1000
    HfApi().upload_file(path_or_fileobj=bomb.encode(), path_in_repo="README.md", repo_id=repo_id,
                        repo_type="dataset")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r"README.md: YAML aliases \(\*name\) are not accepted"):
        pull_dataset(repo_id, tmp_path / "pulled")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing was expanded
    assert not (tmp_path / "pulled").exists()
