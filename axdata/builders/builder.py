"""The `datasets` builder over a local dataset directory, and the per-config table layout it shares with the Hub.

`datasets` gives every split of one config a single set of Features (a Hub config whose splits have different
columns fails with "column names don't match"), but our splits have different columns (`latent` adds
`sae_link`/`sae_id`, `steering` and `preference` have their own). So a config's tables are published in the
*config layout*: the union of its splits' columns, in split order, each split's missing columns as nulls.
Every shard in that layout carries its split's own Arrow schema in its metadata (`SPLIT_SCHEMA_KEY`), so
`from_config_layout` restores the split table exactly (same columns, types and metadata) after a Hub round trip.

    builder = load_builder("runs/demo/data", "gemma-2-2b-it-l20")
    builder.download_and_prepare()
    latent = builder.as_dataset(split="latent")
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.load import configure_builder_class

from axdata.builders import check_config_name, list_configs, list_splits, split_files
from axdata.errors import InputError
from axdata.hashing import content_hash
from axdata.schema import SchemaError, columns, conform_table

logger = logging.getLogger(__name__)

SPLIT_SCHEMA_KEY = b"axbench.split_schema"  # base64 of the split's own serialized Arrow schema
FEATURES_KEY = b"huggingface"  # where `datasets` looks for Features in an Arrow schema

_DESCRIPTION = ("AxBench-style concept data for one model/layer setting: training data for steering / "
                "detection methods (`train`, `preference`), concept-detection evaluation data (`latent`, "
                "`latent_imbalance`) and steering prompts (`steering`).")
_HOMEPAGE = "https://github.com/stanfordnlp/axbench"
_CITATION = """@inproceedings{wu2025axbench,
  title     = {AxBench: Steering LLMs? Even Simple Baselines Outperform Sparse Autoencoders},
  author    = {Wu, Zhengxuan and Arora, Aryaman and Geiger, Atticus and Wang, Zheng and Huang, Jing and
               Jurafsky, Dan and Manning, Christopher D. and Potts, Christopher},
  booktitle = {International Conference on Machine Learning},
  year      = {2025}
}"""


def config_schema(split_schemas: Mapping[str, pa.Schema], *, source: str) -> pa.Schema:
    """The config layout of splits with `split_schemas` (split order = mapping order): the union of their
    columns with their Arrow types, and the union's Features as metadata. `source` names the config in errors."""
    fields: dict[str, pa.Field] = {}
    owner: dict[str, str] = {}
    feats: dict[str, object] = {}
    for split, schema in split_schemas.items():
        split_features = datasets.Features.from_arrow_schema(schema)
        for field in schema:
            if field.name in fields and not fields[field.name].type.equals(field.type):
                raise SchemaError(split, [(field.name, (
                    f"type {field.type} here but {fields[field.name].type} in the {owner[field.name]!r} split of "
                    f"{source}; one config's splits share one column set on the Hub, so cast the column to one "
                    "type in every split (or rename it in one of them)"))], source)
            if field.name not in fields:
                fields[field.name] = field.with_nullable(True)
                owner[field.name] = split
                feats[field.name] = split_features[field.name]
    metadata = datasets.Features(feats).arrow_schema.metadata
    return pa.schema(list(fields.values()), metadata=metadata)


def to_config_layout(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` (one split) in the config layout `schema`; its own schema is kept in the metadata."""
    missing = [name for name in table.column_names if name not in schema.names]
    if missing:
        raise ValueError(f"Columns {missing} are not in the config layout {schema.names}; build the layout with "
                         "config_schema() over every split of the config.")
    arrays = [table.column(field.name) if field.name in table.column_names else pa.nulls(table.num_rows, field.type)
              for field in schema]
    own_schema = base64.b64encode(table.schema.serialize().to_pybytes())
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata({**(schema.metadata or {}), SPLIT_SCHEMA_KEY: own_schema}))


def from_config_layout(table: pa.Table, split: str, *, source: str) -> pa.Table:
    """The split table that `to_config_layout` turned into `table`: its own columns, types and metadata.

    Shards written by other tools lack our metadata; for them the split keeps the columns that have values
    plus the split's schema columns (`axdata.schema`). `source` names the shard in errors."""
    encoded = (table.schema.metadata or {}).get(SPLIT_SCHEMA_KEY)
    if encoded is None:
        own = {column.name for column in columns(split)}
        keep = [name for name in table.column_names if name in own or table.column(name).null_count < table.num_rows]
        logger.info("%s has no %s metadata; keeping columns %s", source, SPLIT_SCHEMA_KEY.decode(), keep)
        return conform_table(table.select(keep).replace_schema_metadata(None), split)
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded)))
    dropped = [name for name in table.column_names if name not in schema.names]
    not_null = [name for name in dropped if table.column(name).null_count < table.num_rows]
    if not_null:
        raise InputError(f"{source}: columns {not_null} hold values but are not in the {split!r} split's own schema; "
                         "the shard was modified after it was written — re-push the dataset from its source.")
    return pa.Table.from_arrays([table.column(name).cast(schema.field(name).type) for name in schema.names],
                                schema=schema)


def read_config_schema(data_dir: str | Path, config: str) -> pa.Schema:
    """The config layout of `config` in a local dataset directory (from the shards' schemas, no data read)."""
    splits = list_splits(data_dir, config)
    if not splits:
        present = ", ".join(list_configs(data_dir)) or "none"
        raise FileNotFoundError(f"No config {config!r} with split shards in {data_dir} (configs present: {present}); "
                                "pass one of the configs present, or import / generate the dataset first.")
    return config_schema({split: pq.read_schema(split_files(data_dir, config, split)[0]) for split in splits},
                         source=str(Path(data_dir) / config))


def config_fingerprint(data_dir: str | Path, config: str) -> str:
    """A cache key that changes whenever a shard of `config` is rewritten (path, size, mtime)."""
    stats = []
    for split in list_splits(data_dir, config):
        for shard in split_files(data_dir, config, split):
            stat = shard.stat()
            stats.append((str(shard.resolve()), stat.st_size, stat.st_mtime_ns))
    return content_hash(stats)


@dataclass
class AxBenchBuilderConfig(datasets.BuilderConfig):
    """One model/layer setting: `name` is the config folder, `data_dir` the dataset directory holding it."""


class AxBenchDataset(datasets.ArrowBasedBuilder):
    """Builds one config of a local dataset directory (`axdata.builders` layout) into a `datasets` cache.

    Every split has the config layout's Features (the union of the splits' columns), exactly as
    `load_dataset` returns them from the Hub. Use `load_builder()`, which fills `BUILDER_CONFIGS` with the
    directory's configs; the bare class takes any `config_name` together with `data_dir`.
    """

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = AxBenchBuilderConfig
    # The configs are the settings in a directory, known only once one is given: see builder_class().
    BUILDER_CONFIGS: ClassVar[list[AxBenchBuilderConfig]] = []

    def _info(self) -> datasets.DatasetInfo:
        data_dir = self._data_dir_or_fail()
        schema = read_config_schema(data_dir, self.config.name)
        return datasets.DatasetInfo(description=_DESCRIPTION, features=datasets.Features.from_arrow_schema(schema),
                                    homepage=_HOMEPAGE, citation=_CITATION, license="cc-by-4.0")

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        data_dir = self._data_dir_or_fail()
        return [datasets.SplitGenerator(name=split, gen_kwargs={"files": split_files(data_dir, self.config.name, split)})
                for split in list_splits(data_dir, self.config.name)]

    def _generate_shards(self, files: list[Path]) -> Iterator[str]:
        yield from (str(file) for file in files)

    def _generate_tables(self, files: list[Path]) -> Iterator[tuple[datasets.builder.Key, pa.Table]]:
        schema = read_config_schema(self._data_dir_or_fail(), self.config.name)
        for file_index, file in enumerate(files):
            for batch_index, batch in enumerate(pq.ParquetFile(file).iter_batches()):
                yield datasets.builder.Key(file_index, batch_index), to_config_layout(pa.Table.from_batches([batch]),
                                                                                      schema)

    def _data_dir_or_fail(self) -> Path:
        if not self.config.data_dir:
            raise InputError(f"AxBenchDataset config {self.config.name!r} has no data_dir; pass data_dir=<dataset "
                             "directory> or build it with axdata.builders.builder.load_builder(data_dir, config).")
        return Path(self.config.data_dir)


def builder_class(data_dir: str | Path) -> type[AxBenchDataset]:
    """`AxBenchDataset` with one `BUILDER_CONFIGS` entry per config (model/layer setting) of `data_dir`.

    Uses `datasets`' own mechanism for configs known at run time (the one it uses for README `configs:`),
    so the class stays picklable and importable by the module name."""
    root = Path(data_dir).resolve()
    configs = [AxBenchBuilderConfig(name=check_config_name(name), data_dir=str(root), version=AxBenchDataset.VERSION)
               for name in list_configs(root)]
    if not configs:
        raise FileNotFoundError(f"{root} holds no dataset configs (no <config>/<split>-*.parquet files); import or "
                                "generate a dataset there first (`axbench data import` / `axbench data generate`).")
    default = configs[0].name if len(configs) == 1 else None
    return configure_builder_class(AxBenchDataset, configs, default, dataset_name=root.name)


def load_builder(data_dir: str | Path, config: str | None = None, *,
                 cache_dir: str | Path | None = None) -> AxBenchDataset:
    """A builder for one config of `data_dir`, cached under a key that follows the shards' contents."""
    cls = builder_class(data_dir)
    if config is not None and config not in cls.builder_configs:
        raise InputError(f"Config {config!r} is not in {data_dir}; the configs there are "
                         f"{', '.join(cls.builder_configs)}.")
    name = config or cls.DEFAULT_CONFIG_NAME
    if name is None:
        raise InputError(f"{data_dir} holds several configs ({', '.join(cls.builder_configs)}); pass one of them.")
    return cls(config_name=name, dataset_name="axbench", hash=config_fingerprint(data_dir, name),
               cache_dir=None if cache_dir is None else str(cache_dir))
