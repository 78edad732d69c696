"""Push a local dataset directory to a Hub dataset repo and pull one back.

Repo layout (what `datasets.load_dataset(repo_id, config, split=...)` reads without axbench installed):
```
README.md                                       card: YAML `configs:` (one per setting), `dataset_info`, version, provenance
<config>/<split>-XXXXX-of-YYYYY.parquet         shards in the config layout (axdata.builders.builder), sharded by size
<config>/concepts.jsonl                         the setting's concepts (AxBench metadata.jsonl lines)
```
A push mirrors the directory: the commit holds exactly its configs (stale shards are deleted) and is tagged
`v<version>`; an unchanged push makes no commit. A pull turns the shards back into the local layout
(`axdata.builders`), file by file, so every stage can run from a pulled dataset.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.info import DatasetInfosDict
from datasets.utils.py_utils import convert_file_size_to_int
from huggingface_hub import DatasetCardData, HfApi, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

from axdata.benchmark import EVAL_FILE, HubOrigin, eval_yaml, write_hub_origin
from axdata.builders import (
    CONCEPTS_FILE,
    check_config_name,
    concepts_path,
    list_configs,
    list_splits,
    read_checked_concepts,
    read_concepts,
    read_provenance,
    split_files,
    write_provenance,
)
from axdata.builders.builder import config_schema, from_config_layout, to_config_layout
from axdata.cards import render_card
from axdata.errors import InputError
from axdata.io import atomic_path, check_new_directory, replaced_directory
from axdata.safe_yaml import card_metadata
from axdata.schema import CATEGORIES, SPLITS, columns

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
DEFAULT_VERSION = "1.0.0"
DEFAULT_MAX_SHARD_SIZE = "500MB"  # what `Dataset.push_to_hub` uses
DEFAULT_LICENSE = "cc-by-4.0"
TASK_CATEGORIES = ("text-classification", "text-generation")
TAGS = ("axbench", "interpretability", "steering", "concept-detection", "synthetic")
_SHARD_NAME = re.compile(r"(?P<split>\w+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet")
# Files a push owns: mirrored from the local directory, so shards of an earlier push that are gone locally go too.
_OWNED_PATTERNS = ["*.parquet", f"*/{CONCEPTS_FILE}"]
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


@dataclass
class SplitSummary:
    name: str
    rows: int
    shards: int
    num_bytes: int  # Arrow size in the config layout, as `datasets` counts it
    categories: dict[str, int]  # empty for splits without a `category` column


@dataclass
class ConfigSummary:
    name: str
    splits: list[SplitSummary]
    concepts: int | None  # None: the config has no concepts.jsonl
    features: datasets.Features
    generator_models: list[str] = field(default_factory=list)
    template_hashes: list[str] = field(default_factory=list)


@dataclass
class PushReport:
    repo_id: str
    url: str
    version: str
    revision: str  # the branch pushed to
    commit_oid: str
    commit_url: str
    created_commit: bool  # False: the revision already held this content
    tag: str | None
    created_tag: bool
    files: list[str]  # repo paths of this push
    configs: list[ConfigSummary]


@dataclass
class PullReport:
    repo_id: str
    revision: str | None
    commit_oid: str
    version: str | None  # the card's `version`
    out_dir: Path
    files: list[Path]
    configs: dict[str, dict[str, int]]  # config → split → rows


def push_dataset(
    local_dir: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    version: str = DEFAULT_VERSION,
    tag: bool = True,
    private: bool = False,
    commit_message: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    license: str = DEFAULT_LICENSE,
    provenance: Mapping[str, Any] | None = None,
    token: str | None = None,
) -> PushReport:
    """Upload every config of `local_dir` to the dataset repo `repo_id` (created if missing) and tag `v<version>`.

    `revision` is the branch to commit to (created from main if missing; default main). `provenance` adds to
    `<local_dir>/provenance.json` and to what the data's provenance columns say. The token comes from `token`
    or the usual huggingface_hub login / HF_TOKEN, and is never written anywhere.
    """
    root = Path(local_dir)
    configs = list_configs(root)
    if not configs:
        raise FileNotFoundError(f"{root} holds no dataset configs (no <config>/<split>-*.parquet files); push a "
                                "directory written by `axbench data import` / `axbench data generate`.")
    version = _check_version(version)
    shard_bytes = convert_file_size_to_int(max_shard_size)
    api = HfApi(token=token)
    branch = revision or "main"
    tag_name = f"v{version}" if tag else None
    with tempfile.TemporaryDirectory(prefix="axbench-push-") as staging_dir:
        staging = Path(staging_dir)
        summaries = [_stage_config(root, config, staging, shard_bytes) for config in configs]
        card_provenance = _provenance(summaries, {**read_provenance(root), **(provenance or {})})
        card = dataset_card(repo_id, summaries, version=version, license=license, provenance=card_provenance)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        # The benchmark registration (one task per kind and config, the same configs as the card's YAML) goes in
        # a commit of its own: the Hub validates eval.yaml at push time, and a refusal must not lose the data.
        registration = eval_yaml(repo_id.rsplit("/", maxsplit=1)[-1], {config: list_splits(root, config) for config in configs})
        files = sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file())

        repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, repo_type="dataset", branch=branch, exist_ok=True)
        tagged = _existing_tag(api, repo_id, tag_name)
        if tagged is not None:
            if not _same_content(api, repo_id, tagged, staging):
                raise InputError(f"{repo_id} already has tag {tag_name} (commit {tagged[:12]}) with other content "
                                 f"than {root}; versions are immutable — push with a new version (e.g. "
                                 f"--version {_next_version(version)}).")
            logger.info("%s: %s already holds this content; nothing to push", repo_id, tag_name)
            return PushReport(repo_id, _repo_url(repo_url, tag_name), version, branch, tagged,
                              _commit_url(api, repo_id, tagged), False, tag_name, False, files, summaries)
        head = api.repo_info(repo_id, repo_type="dataset", revision=branch).sha
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="dataset", folder_path=staging, revision=branch,
            commit_message=commit_message or f"Upload dataset version {version}", delete_patterns=_OWNED_PATTERNS,
        )
    created_commit = commit.oid != head
    commit = _register_benchmark(api, repo_id, branch, registration) or commit
    if tag_name:
        api.create_tag(repo_id, repo_type="dataset", tag=tag_name, revision=commit.oid,
                       tag_message=f"Dataset version {version}")
    report = PushReport(repo_id, _repo_url(repo_url, tag_name or branch), version, branch, commit.oid,
                        commit.commit_url, created_commit, tag_name, tag_name is not None, files, summaries)
    logger.info("Pushed %s to %s@%s: commit %s%s", root, repo_id, branch, commit.oid[:12],
                "" if created_commit else " (unchanged)")
    return report


def _register_benchmark(api: HfApi, repo_id: str, branch: str, registration: str) -> Any:
    """Commit `eval.yaml` when it changed; a Hub that refuses it (e.g. an evaluation framework it does not list
    yet) gets a warning, and the pushed data stands."""
    try:
        current = api.hf_hub_download(repo_id, EVAL_FILE, repo_type="dataset", revision=branch)
        if Path(current).read_text(encoding="utf-8") == registration:
            return None
    except EntryNotFoundError:
        pass
    try:
        return api.upload_file(path_or_fileobj=registration.encode(), path_in_repo=EVAL_FILE, repo_id=repo_id,
                               repo_type="dataset", revision=branch, commit_message="Register the benchmark (eval.yaml)")
    except HfHubHTTPError as error:
        logger.warning("%s: the Hub did not accept %s (%s); the data is pushed, but the dataset is not registered "
                       "as a benchmark — see the README, 'Publishing results'.", repo_id, EVAL_FILE, error)
        return None


MAX_CARD_BYTES = 1 << 20
MAX_PROVENANCE_BYTES = 256 << 10


def _pulled_card_metadata(path: Path, source: str) -> dict[str, Any]:
    """A pulled card's YAML header, parsed without aliases and within size bounds (a card is untrusted input)."""
    size = path.stat().st_size
    if size > MAX_CARD_BYTES:
        raise InputError(f"{source} is {size} bytes, more than the {MAX_CARD_BYTES} a dataset card may have; "
                         "it was not written by `axbench data push`.")
    return card_metadata(path.read_text(encoding="utf-8", errors="replace"), source)


def _check_provenance(provenance: Any, source: str) -> None:
    if not isinstance(provenance, dict):
        raise InputError(f"{source}: 'provenance' must be a mapping, got {type(provenance).__name__}.")
    size = len(json.dumps(provenance, default=str))
    if size > MAX_PROVENANCE_BYTES:
        raise InputError(f"{source}: 'provenance' is {size} bytes as JSON, more than the {MAX_PROVENANCE_BYTES} "
                         "accepted; the card was not written by `axbench data push`.")


def pull_dataset(repo_id: str, out_dir: str | Path, *, revision: str | None = None,
                 token: str | None = None, overwrite: bool = False) -> PullReport:
    """Download `repo_id` at `revision` (a tag such as v1.0.0, a branch or a commit; default main) into a new
    local dataset directory `out_dir`, in the `axdata.builders` layout. `out_dir` must not exist or be empty,
    unless `overwrite` (then it is replaced once the pulled copy is complete and checked)."""
    out = Path(out_dir)
    check_new_directory(out, overwrite=overwrite)
    api = HfApi(token=token)
    commit_oid = api.dataset_info(repo_id, revision=revision).sha
    snapshot = Path(snapshot_download(repo_id, repo_type="dataset", revision=commit_oid, token=token,
                                      allow_patterns=["*/*.parquet", f"*/{CONCEPTS_FILE}", CARD_FILE]))
    shards = sorted(path for path in snapshot.glob("*/*.parquet") if _SHARD_NAME.fullmatch(path.name))
    if not shards:
        raise FileNotFoundError(f"{repo_id}@{revision or 'main'} has no <config>/<split>-XXXXX-of-YYYYY.parquet "
                                "shards; it was not pushed with `axbench data push` (load it with "
                                "datasets.load_dataset instead).")
    # Built beside `out` and renamed into place, so an interrupted pull leaves no half dataset behind.
    with replaced_directory(out, overwrite=overwrite) as staging:
        configs = _unpack(snapshot, shards, staging)
        for config in configs:  # the concept lists, read as every stage will read them: whole and covering
            if concepts_path(staging, config).is_file():
                read_checked_concepts(staging, config, source=f"{repo_id}/{config}/{CONCEPTS_FILE}")
            else:
                logger.warning("%s/%s has no %s; stages that need the concept list will refuse it", repo_id, config,
                               CONCEPTS_FILE)
        card_path = snapshot / CARD_FILE
        card_data = _pulled_card_metadata(card_path, f"{repo_id}/{CARD_FILE}") if card_path.is_file() else {}
        version = card_data.get("version")
        if version is not None and not isinstance(version, str):
            raise InputError(f"{repo_id}/{CARD_FILE}: field 'version' must be a string such as '1.0.0', not "
                             f"{version!r}; the card was not written by `axbench data push` (fix the card).")
        provenance = card_data.get("provenance")
        if provenance:
            _check_provenance(provenance, f"{repo_id}/{CARD_FILE}")
            write_provenance(provenance, staging)
        if card_path.is_file():
            shutil.copyfile(card_path, staging / CARD_FILE)
        # Where this copy came from, so results computed on it name the exact data (.eval_results).
        write_hub_origin(HubOrigin(repo_id, revision, commit_oid), staging)
    files = sorted(path for path in out.rglob("*") if path.is_file())
    logger.info("Pulled %s@%s (commit %s) into %s", repo_id, revision or "main", commit_oid[:12], out)
    return PullReport(repo_id, revision, commit_oid, version, out, files, configs)


def dataset_card(repo_id: str, configs: list[ConfigSummary], *, version: str, license: str = DEFAULT_LICENSE,
                 provenance: Mapping[str, Any] | None = None) -> str:
    """The README of a dataset repo holding `configs`, rendered from `hub_cards/dataset_card.md`."""
    card_data = DatasetCardData(
        license=license,
        task_categories=list(TASK_CATEGORIES),
        language=["en"],
        tags=list(TAGS),
        size_categories=[_size_category(sum(split.rows for config in configs for split in config.splits))],
        pretty_name=repo_id.rsplit("/", maxsplit=1)[-1],
        configs=[{"config_name": config.name, **({"default": True} if index == 0 else {}),
                  "data_files": [{"split": split.name, "path": f"{config.name}/{split.name}-*.parquet"}
                                 for split in config.splits]}
                 for index, config in enumerate(configs)],
    )
    DatasetInfosDict({config.name: _dataset_info(config) for config in configs}).to_dataset_card_data(card_data)
    metadata = {**card_data.to_dict(), "version": version, **({"provenance": dict(provenance)} if provenance else {})}
    return render_card(
        "dataset_card.md", metadata=metadata, repo_id=repo_id, version=version, configs=configs,
        categories=CATEGORIES, split_columns=_split_columns(configs), provenance=dict(provenance or {}),
        license=license,
    )


def _stage_config(root: Path, config: str, staging: Path, shard_bytes: int) -> ConfigSummary:
    """Write `config`'s splits as config-layout shards (and its concepts) under `staging`; summarise them."""
    splits = list_splits(root, config)
    tables = {split: pq.read_table(split_files(root, config, split)) for split in splits}
    schema = config_schema({split: table.schema for split, table in tables.items()}, source=str(root / config))
    summaries, generators, templates = [], set(), set()
    for split, table in tables.items():
        published = to_config_layout(table, schema)
        shards = _shards(published, shard_bytes)
        for index, shard in enumerate(shards):
            path = staging / config / f"{split}-{index:05d}-of-{len(shards):05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(shard, path)
        categories = Counter(table.column("category").to_pylist()) if "category" in table.column_names else Counter()
        summaries.append(SplitSummary(split, table.num_rows, len(shards), published.nbytes,
                                      {category: categories[category] for category in CATEGORIES
                                       if categories[category]}))
        generators |= _distinct(table, "generator_model")
        templates |= _distinct(table, "template_hash")
    concepts = None
    if concepts_path(root, config).is_file():
        concepts = len(read_concepts(root, config))  # also proves the file parses before it is published
        shutil.copyfile(concepts_path(root, config), staging / config / CONCEPTS_FILE)
    else:
        logger.warning("%s has no %s; the pushed config will have no concept list", root / config, CONCEPTS_FILE)
    return ConfigSummary(config, summaries, concepts, datasets.Features.from_arrow_schema(schema),
                         sorted(generators), sorted(templates))


def _shards(table: pa.Table, shard_bytes: int) -> list[pa.Table]:
    """Contiguous row ranges of about `shard_bytes` each (Arrow size, as `push_to_hub` measures)."""
    count = min(max(1, math.ceil(table.nbytes / shard_bytes)), max(1, table.num_rows))
    bounds = [round(index * table.num_rows / count) for index in range(count + 1)]
    return [table.slice(start, stop - start) for start, stop in itertools.pairwise(bounds)]


def _unpack(snapshot: Path, shards: list[Path], staging: Path) -> dict[str, dict[str, int]]:
    configs: dict[str, dict[str, int]] = {}
    for shard in shards:
        config = check_config_name(shard.parent.name)
        split = _SHARD_NAME.fullmatch(shard.name).group("split")
        if split not in SPLITS:
            logger.warning("%s: %r is not an axbench split (%s); skipped", shard.relative_to(snapshot), split,
                           ", ".join(SPLITS))
            continue
        table = from_config_layout(pq.read_table(shard), split, source=str(shard.relative_to(snapshot)))
        with atomic_path(staging / config / shard.name) as tmp:
            pq.write_table(table, tmp)
        rows = configs.setdefault(config, {})
        rows[split] = rows.get(split, 0) + table.num_rows
    for config in configs:
        if (snapshot / config / CONCEPTS_FILE).is_file():
            shutil.copyfile(snapshot / config / CONCEPTS_FILE, staging / config / CONCEPTS_FILE)
    return {config: {split: rows[split] for split in SPLITS if split in rows} for config, rows in configs.items()}


def _dataset_info(config: ConfigSummary) -> datasets.DatasetInfo:
    splits = datasets.SplitDict()
    for split in config.splits:
        splits.add(datasets.SplitInfo(name=split.name, num_examples=split.rows, num_bytes=split.num_bytes))
    return datasets.DatasetInfo(features=config.features, splits=splits,
                                dataset_size=sum(split.num_bytes for split in config.splits))


def _split_columns(configs: list[ConfigSummary]) -> dict[str, list[dict[str, Any]]]:
    """Per split present in any config: its schema columns (name, type, nullable, description)."""
    present = {split.name for config in configs for split in config.splits}
    return {split: [{"name": column.name, "dtype": column.dtype, "nullable": column.nullable,
                     "description": column.description} for column in columns(split)]
            for split in SPLITS if split in present}


def _provenance(configs: list[ConfigSummary], recorded: Mapping[str, Any]) -> dict[str, Any]:
    """What the data says (generator models, template hashes), then what was recorded (which wins)."""
    derived: dict[str, Any] = {}
    generators = sorted({model for config in configs for model in config.generator_models})
    templates = sorted({digest for config in configs for digest in config.template_hashes})
    if generators:
        derived["generator_models"] = generators
    if templates:
        derived["template_hashes"] = templates
    return {**derived, **recorded}


def _distinct(table: pa.Table, column: str) -> set[str]:
    if column not in table.column_names:
        return set()
    return {value for value in table.column(column).unique().to_pylist() if value is not None}


def _check_version(version: str) -> str:
    text = version.removeprefix("v")
    if not re.fullmatch(r"\d+\.\d+\.\d+", text):
        raise InputError(f"Version {version!r} is not MAJOR.MINOR.PATCH; pass e.g. '1.0.0' (the tag becomes v1.0.0).")
    return text


def _next_version(version: str) -> str:
    major, minor, patch = version.split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


def _size_category(rows: int) -> str:
    return next((name for limit, name in _SIZE_CATEGORIES if rows < limit), "n>100M")


def _existing_tag(api: HfApi, repo_id: str, tag: str | None) -> str | None:
    """The commit `tag` points to, or None when there is no such tag (or tagging is off)."""
    if tag is None:
        return None
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    return next((ref.target_commit for ref in refs.tags if ref.name == tag), None)


def _same_content(api: HfApi, repo_id: str, revision: str, staging: Path) -> bool:
    """Whether the repo at `revision` holds exactly the staged files among the files a push owns."""
    remote = {entry.path: entry for entry in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision,
                                                                recursive=True) if hasattr(entry, "blob_id")}
    local = {str(path.relative_to(staging)): path for path in staging.rglob("*") if path.is_file()}
    owned_remote = {path for path in remote if path.endswith((".parquet", f"/{CONCEPTS_FILE}"))}
    if owned_remote - set(local) or set(local) - set(remote):
        return False
    for path, file in local.items():
        entry = remote[path]
        if entry.lfs is not None:
            if entry.lfs.sha256 != _digest(file, hashlib.sha256()):
                return False
        # Regular files are compared by their git blob id: sha1 of a "blob <size>" header and the bytes.
        elif entry.blob_id != _digest(file, hashlib.sha1(b"blob %d\0" % file.stat().st_size)):
            return False
    return True


def _digest(path: Path, digest: Any) -> str:
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _repo_url(repo_url: str, revision: str | None) -> str:
    return f"{repo_url}/tree/{revision}" if revision and revision != "main" else str(repo_url)


def _commit_url(api: HfApi, repo_id: str, commit_oid: str) -> str:
    return f"{api.endpoint}/datasets/{repo_id}/commit/{commit_oid}"


__all__ = ["CARD_FILE", "DEFAULT_VERSION", "ConfigSummary", "PullReport", "PushReport",
           "SplitSummary", "dataset_card", "pull_dataset", "push_dataset"]
