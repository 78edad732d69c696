"""The Hub stand-in against the real clients: huggingface_hub (HfApi, downloads, cards, HfFileSystem) and datasets."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import datasets
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_hub import HubEnv
from huggingface_hub import (
    CommitOperationAdd,
    DatasetCard,
    DatasetCardData,
    HfApi,
    HfFileSystem,
    ModelCard,
    ModelCardData,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.numpy import load_file, save_file


def _lfs_puts(env: HubEnv) -> set[str]:
    return {path.rsplit("/", 1)[-1] for method, path in env.server.requests if method == "PUT"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_repo_all_types_and_exist_ok(hub_env: HubEnv) -> None:
    api = HfApi()
    model, dataset, space = hub_env.repo_id("model"), hub_env.repo_id("data"), hub_env.repo_id("space")

    assert api.create_repo(model) == f"{hub_env.endpoint}/{model}"
    assert api.create_repo(dataset, repo_type="dataset") == f"{hub_env.endpoint}/datasets/{dataset}"
    assert api.create_repo(space, repo_type="space", space_sdk="static").repo_id == space

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(dataset, repo_type="dataset")
    assert err.value.response.status_code == 409
    assert api.create_repo(dataset, repo_type="dataset", exist_ok=True).repo_id == dataset

    assert api.repo_exists(model) and api.repo_exists(dataset, repo_type="dataset")
    assert not api.repo_exists(dataset)  # a dataset is not a model
    assert api.space_info(space).sdk == "static"
    info = api.dataset_info(dataset)
    assert info.id == dataset and len(info.sha) == 40
    # Like the Hub, a new repo starts with an initial commit holding the LFS rules.
    assert api.list_repo_files(model) == [".gitattributes"]
    # Repos created without a namespace land in the token's user namespace.
    assert api.create_repo("no-namespace-" + model.rsplit("-", 1)[-1]).repo_id.startswith(f"{hub_env.user}/")


@pytest.mark.filterwarnings("ignore:It seems that you are about to commit a data file")
def test_upload_regular_and_lfs_files_then_download(hub_env: HubEnv, tmp_path: Path) -> None:
    api = HfApi()
    repo = hub_env.repo_id("dictionary")
    api.create_repo(repo)
    folder = tmp_path / "upload"
    (folder / "layer_12").mkdir(parents=True)
    (folder / "layer_12" / "config.json").write_text(json.dumps({"d_model": 8}))
    save_file(
        {"W": np.arange(32, dtype=np.float32).reshape(4, 8)}, folder / "layer_12" / "weights.safetensors"
    )
    pq.write_table(pa.table({"x": [1, 2, 3]}), folder / "data.parquet")
    hub_env.server.clear_requests()

    api.upload_file(path_or_fileobj=b"# hello\n", path_in_repo="README.md", repo_id=repo)
    api.upload_folder(folder_path=folder, repo_id=repo, commit_message="add dictionary")

    # Binary files went through the LFS batch + PUT, small text files inline in the commit.
    assert _lfs_puts(hub_env) == {
        _sha256(folder / "layer_12" / "weights.safetensors"),
        _sha256(folder / "data.parquet"),
    }
    assert ("POST", f"/{repo}.git/info/lfs/objects/batch") in hub_env.server.requests
    assert sorted(api.list_repo_files(repo)) == [
        ".gitattributes",
        "README.md",
        "data.parquet",
        "layer_12/config.json",
        "layer_12/weights.safetensors",
    ]
    infos = {
        i.path: i for i in api.get_paths_info(repo, ["layer_12/weights.safetensors", "README.md", "layer_12"])
    }
    assert infos["layer_12/weights.safetensors"].lfs.sha256 == _sha256(
        folder / "layer_12" / "weights.safetensors"
    )
    assert infos["README.md"].lfs is None and infos["layer_12"].tree_id

    weights = hf_hub_download(repo, "layer_12/weights.safetensors")
    np.testing.assert_array_equal(load_file(weights)["W"], np.arange(32, dtype=np.float32).reshape(4, 8))
    assert Path(hf_hub_download(repo, "README.md")).read_text() == "# hello\n"
    # Downloads go to the session's HF_HOME (tests/conftest.py), never the user's cache.
    assert Path(weights).is_relative_to(hub_env.home)

    snapshot = Path(snapshot_download(repo))
    assert (snapshot / "layer_12" / "config.json").read_text() == json.dumps({"d_model": 8})
    assert pq.read_table(snapshot / "data.parquet").column("x").to_pylist() == [1, 2, 3]

    # Re-uploading unchanged files makes no new commit and uploads nothing.
    commits_before = len(api.list_repo_commits(repo))
    hub_env.server.clear_requests()
    api.upload_folder(folder_path=folder, repo_id=repo)
    assert _lfs_puts(hub_env) == set() and len(api.list_repo_commits(repo)) == commits_before


def test_branches_tags_and_commit_history(hub_env: HubEnv) -> None:
    api = HfApi()
    repo = hub_env.repo_id("versions")
    api.create_repo(repo, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"v1",
        path_in_repo="version.txt",
        repo_id=repo,
        repo_type="dataset",
        commit_message="first version",
    )
    api.create_tag(repo, tag="v1.0", repo_type="dataset")
    api.create_branch(repo, branch="dev", repo_type="dataset")
    api.create_branch(repo, branch="dev", repo_type="dataset", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch(repo, branch="dev", repo_type="dataset")
    assert err.value.response.status_code == 409
    api.upload_file(
        path_or_fileobj=b"dev",
        path_in_repo="version.txt",
        repo_id=repo,
        repo_type="dataset",
        revision="dev",
        commit_message="dev version",
    )
    api.upload_file(
        path_or_fileobj=b"v2",
        path_in_repo="version.txt",
        repo_id=repo,
        repo_type="dataset",
        commit_message="second version",
    )

    def read(revision: str | None) -> str:
        return Path(hf_hub_download(repo, "version.txt", repo_type="dataset", revision=revision)).read_text()

    assert (read(None), read("dev"), read("v1.0")) == ("v2", "dev", "v1")
    refs = api.list_repo_refs(repo, repo_type="dataset")
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [(t.name, t.ref) for t in refs.tags] == [("v1.0", "refs/tags/v1.0")]
    commits = api.list_repo_commits(repo, repo_type="dataset")
    assert [c.title for c in commits] == ["second version", "first version", "initial commit"]
    assert read(commits[1].commit_id) == "v1"
    assert api.list_repo_commits(repo, repo_type="dataset", revision="dev")[0].title == "dev version"

    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "version.txt", repo_type="dataset", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(repo, revision="no-such-branch")
    # A commit based on a stale parent is refused (412), as `datasets` relies on to retry its card update.
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(
            repo,
            repo_type="dataset",
            commit_message="stale",
            parent_commit=commits[1].commit_id,
            operations=[CommitOperationAdd("other.txt", b"x")],
        )
    assert err.value.response.status_code == 412


def test_missing_repo_file_and_delete(hub_env: HubEnv) -> None:
    api = HfApi()
    repo = hub_env.repo_id("gone")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo, "README.md")
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="a/b.txt", repo_id=repo)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "missing.txt")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo, path_in_repo="no-folder"))
    assert [f.path for f in api.list_repo_tree(repo, path_in_repo="a")] == ["a/b.txt"]
    assert api.file_exists(repo, "a/b.txt") and not api.file_exists(repo, "a/c.txt")
    assert not api.file_exists(hub_env.repo_id("never"), "a/b.txt")

    api.delete_repo(repo)
    assert not api.repo_exists(repo)
    api.delete_repo(repo, missing_ok=True)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(repo)


def test_dataset_push_two_configs_and_load(hub_env: HubEnv) -> None:
    repo = hub_env.repo_id("concepts")
    rows_a = {"concept": ["cats", "dogs", "rain"], "label": [1, 0, 1]}
    rows_b = {"concept": ["snow"], "label": [0]}
    datasets.Dataset.from_dict(rows_a).push_to_hub(repo, config_name="a")
    datasets.Dataset.from_dict(rows_b).push_to_hub(repo, config_name="b")

    assert datasets.load_dataset(repo, "a", split="train").to_dict() == rows_a
    assert datasets.load_dataset(repo, "b", split="train").to_dict() == rows_b
    card = HfApi().dataset_info(repo).card_data
    assert sorted(c["config_name"] for c in card["configs"]) == ["a", "b"]
    assert sorted(HfApi().list_repo_files(repo, repo_type="dataset")) == [
        ".gitattributes",
        "README.md",
        "a/train-00000-of-00001.parquet",
        "b/train-00000-of-00001.parquet",
    ]
    # The parquet shards were LFS uploads: that is the only way push_to_hub's temporary files reach the Hub.
    assert any(method == "PUT" for method, _ in hub_env.server.requests)


def test_dataset_push_and_load_a_revision(hub_env: HubEnv) -> None:
    repo = hub_env.repo_id("versioned")
    datasets.Dataset.from_dict({"x": [1, 2]}).push_to_hub(repo, config_name="a")
    datasets.Dataset.from_dict({"x": [3, 4, 5]}).push_to_hub(repo, config_name="a", revision="v2")

    assert datasets.load_dataset(repo, "a", split="train", revision="v2")["x"] == [3, 4, 5]
    assert datasets.load_dataset(repo, "a", split="train")["x"] == [1, 2]
    assert {b.name for b in HfApi().list_repo_refs(repo, repo_type="dataset").branches} == {"main", "v2"}


def test_range_reads_through_hffilesystem(hub_env: HubEnv) -> None:
    api = HfApi()
    repo = hub_env.repo_id("ranges")
    api.create_repo(repo, repo_type="dataset")
    payload = bytes(range(256)) * 40
    api.upload_file(path_or_fileobj=payload, path_in_repo="blob.bin", repo_id=repo, repo_type="dataset")

    with HfFileSystem().open(f"datasets/{repo}/blob.bin", "rb", block_size=1024) as handle:
        handle.seek(5000)
        assert handle.read(300) == payload[5000:5300]

    url = f"{hub_env.endpoint}/datasets/{repo}/resolve/main/blob.bin"
    response = httpx.get(url, headers={"Range": "bytes=-10"})
    assert response.status_code == 206 and response.content == payload[-10:]
    assert response.headers["Content-Range"] == f"bytes {len(payload) - 10}-{len(payload) - 1}/{len(payload)}"
    assert response.headers["X-Linked-Etag"] == f'"{hashlib.sha256(payload).hexdigest()}"'
    assert httpx.get(url, headers={"Range": f"bytes={len(payload)}-"}).status_code == 416


def test_model_and_dataset_cards_round_trip(hub_env: HubEnv) -> None:
    model, dataset = hub_env.repo_id("card-model"), hub_env.repo_id("card-data")
    HfApi().create_repo(model)
    HfApi().create_repo(dataset, repo_type="dataset")
    model_card = ModelCard.from_template(
        ModelCardData(
            license="apache-2.0",
            library_name="axbench",
            base_model="HuggingFaceTB/SmolLM2-135M",
            tags=["steering"],
        ),
        model_description="A concept dictionary.",
    )
    model_card.push_to_hub(model)
    DatasetCard.from_template(DatasetCardData(license="cc-by-4.0", pretty_name="Concepts")).push_to_hub(
        dataset
    )

    loaded = ModelCard.load(model)
    assert loaded.data.library_name == "axbench" and loaded.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert "A concept dictionary." in loaded.text
    assert HfApi().model_info(model).card_data.tags == ["steering"]
    assert DatasetCard.load(dataset).data.pretty_name == "Concepts"
    assert ("POST", "/api/validate-yaml") in hub_env.server.requests


def test_space_metric_module(hub_env: HubEnv) -> None:
    api = HfApi()
    space = hub_env.repo_id("concept_score")
    api.create_repo(space, repo_type="space", space_sdk="gradio")
    module = "import evaluate\n\nclass ConceptScore(evaluate.Metric):\n    pass\n"
    readme = "---\ntitle: Concept Score\nsdk: gradio\ntags: [evaluate, metric]\n---\n# Concept Score\n"
    for name, content in (("concept_score.py", module), ("README.md", readme)):
        api.upload_file(path_or_fileobj=content.encode(), path_in_repo=name, repo_id=space, repo_type="space")

    assert Path(hf_hub_download(space, "concept_score.py", repo_type="space")).read_text() == module
    assert api.space_info(space).card_data.title == "Concept Score"


def test_concurrent_commits_are_serialised(hub_env: HubEnv) -> None:
    api = HfApi()
    repo = hub_env.repo_id("busy")
    api.create_repo(repo)
    errors: list[BaseException] = []

    def push(i: int) -> None:
        try:
            HfApi().upload_file(path_or_fileobj=f"{i}".encode(), path_in_repo=f"f{i}.txt", repo_id=repo)
        except HfHubHTTPError as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(api.list_repo_files(repo)) == [".gitattributes"] + sorted(f"f{i}.txt" for i in range(8))
    assert len(api.list_repo_commits(repo)) == 9


def test_server_protocol_edges(hub_env: HubEnv) -> None:
    with httpx.Client(base_url=hub_env.endpoint) as client:
        # An unknown route with a body must not corrupt the next request on the same keep-alive connection.
        response = client.post("/api/no/such/route", content=b"x" * 100_000)
        assert response.status_code == 404 and response.headers["X-Error-Code"] == "RouteNotFound"
        assert client.get("/api/whoami-v2").json()["name"] == hub_env.user

        good = b"payload"
        oid = hashlib.sha256(good).hexdigest()
        bad = client.put(f"/_lfs/{oid}", content=b"tampered")
        assert bad.status_code == 400 and bad.headers["X-Error-Code"] == "LfsChecksumMismatch"
        # Chunked uploads (what httpx sends for streamed file objects) are accepted too.
        assert client.put(f"/_lfs/{oid}", content=iter([good[:3], good[3:]])).status_code == 200

        repo = hub_env.repo_id("raw")
        client.post("/api/repos/create", json={"name": repo.split("/")[1], "organization": hub_env.user})
        commit = client.post(
            f"/api/models/{repo}/commit/main",
            headers={"Content-Type": "application/x-ndjson"},
            content=b"\n".join(
                json.dumps(line).encode()
                for line in (
                    {"key": "header", "value": {"summary": "raw commit"}},
                    {"key": "lfsFile", "value": {"path": "payload.bin", "algo": "sha256", "oid": oid}},
                    {
                        "key": "file",
                        "value": {
                            "path": "t.txt",
                            "content": base64.b64encode(b"t").decode(),
                            "encoding": "base64",
                        },
                    },
                )
            ),
        )
        assert commit.status_code == 200, commit.text
        head = client.head(f"/{repo}/resolve/main/payload.bin")
        assert head.headers["X-Repo-Commit"] == commit.json()["commitOid"]
        assert head.headers["X-Linked-Size"] == str(len(good)) and head.headers["Content-Length"] == "7"
    leftovers = list((hub_env.server.store.root / "tmp").iterdir())
    assert leftovers == [], "failed uploads and deletions must leave no temporary files"


def test_command_line_entry_point(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "support" / "hub_standin.py"), "--root", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        endpoint = line.split()[0].removeprefix("HF_ENDPOINT=")
        assert httpx.get(f"{endpoint}/api/whoami-v2", timeout=10).json()["name"] == "user"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_libraries_read_the_stand_in_from_the_environment(hub_server) -> None:
    """tests/conftest.py set the environment before any import: the libraries' own constants name the stand-in
    and the session's HF_HOME, with nothing patched."""
    import os

    import huggingface_hub.constants

    home = Path(os.environ["HF_HOME"])
    assert huggingface_hub.constants.ENDPOINT == datasets.config.HF_ENDPOINT == hub_server.endpoint
    assert hub_server.host in huggingface_hub.constants.HF_URL_HOSTS  # the token goes to the stand-in only
    assert Path(huggingface_hub.constants.HF_HUB_CACHE).is_relative_to(home)
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(home)
    assert not huggingface_hub.constants.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_DISABLE_XET
    with pytest.raises(RepositoryNotFoundError):  # a repo the stand-in lacks: a quick 404, no retries
        HfApi().model_info("nobody/no-such-model")
