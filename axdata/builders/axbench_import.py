"""Lossless import of AxBench-format data into our layout (see `axdata.builders`).

Two source layouts, for one model/layer setting:
- repository: `<dir>/generate/train_data.parquet`, `<dir>/generate/metadata.jsonl`, optionally
  `<dir>/inference/latent_eval_data.parquet` and `<dir>/generate/dpo_train_data.parquet`;
- Hub (`pyvene/axbench-concept*`): `<dir>/train/data.parquet`, optionally `<dir>/test/data.parquet`,
  where `<dir>` is one setting such as `<repo>/2b/l20`. The Hub has no metadata.jsonl, so the concepts
  are read off the data: the description from the positives, genres from their `concept_genre`, the
  ref from the eval set's `sae_link`.

Lossless: every row in its order, every value unchanged, every column kept (columns the schema does not
know stay after the schema's, with their Arrow types); our nullable provenance columns are added as nulls.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from axdata.builders import check_config_name, read_provenance, write_concepts, write_provenance, write_split
from axdata.concepts import Concept, load_concepts
from axdata.errors import InputError
from axdata.hashing import file_hash
from axdata.schema import CATEGORIES, GENRES, SHARED_NEGATIVE_ID, conform_table, validate_frame

logger = logging.getLogger(__name__)

# split → file, relative to the setting folder, per layout
REPOSITORY_FILES = {
    "train": "generate/train_data.parquet",
    "latent": "inference/latent_eval_data.parquet",
    "preference": "generate/dpo_train_data.parquet",
}
REPOSITORY_METADATA = "generate/metadata.jsonl"
HUB_FILES = {"train": "train/data.parquet", "latent": "test/data.parquet"}


class AxBenchImportError(InputError):
    """The source is not AxBench-format data, or its parts disagree; the message says what to do."""


@dataclass(frozen=True)
class AxBenchSource:
    """Where one setting's AxBench files are."""

    root: Path
    layout: str  # "repository" or "hub"
    split_files: dict[str, Path]
    metadata: Path | None  # the repository layout's metadata.jsonl


@dataclass
class AxBenchData:
    """One setting read into our schema: Arrow tables per split (lossless) and the concepts."""

    source: AxBenchSource
    tables: dict[str, pa.Table]
    concepts: list[Concept]

    def frame(self, split: str) -> pd.DataFrame:
        return self.tables[split].to_pandas()


@dataclass
class ImportReport:
    config: str
    layout: str
    source_dir: Path
    out_dir: Path
    files: dict[str, Path]  # split name or "concepts" → written file
    rows: dict[str, int]
    categories: dict[str, dict[str, int]]  # split → category → rows
    concepts: int
    genres: dict[str, int]  # genre → concepts
    shared_negatives: int  # train rows with concept_id -1
    source_hashes: dict[str, str] = field(default_factory=dict)  # source file (relative) → sha256 prefix

    def summary(self) -> str:
        lines = [f"Imported {self.source_dir} ({self.layout} layout) as config {self.config!r} into {self.out_dir}"]
        for split, count in self.rows.items():
            by_category = ", ".join(f"{category} {n}" for category, n in self.categories[split].items())
            lines.append(f"  {split}: {count} rows" + (f" ({by_category})" if by_category else ""))
        genres = ", ".join(f"{genre} {n}" for genre, n in self.genres.items())
        lines.append(f"  concepts: {self.concepts} ({genres}); shared negatives: {self.shared_negatives}")
        return "\n".join(lines)


def locate_axbench(source_dir: str | Path) -> AxBenchSource:
    """Find one setting's files in `source_dir`, in either layout."""
    root = Path(source_dir)
    if not root.is_dir():
        raise AxBenchImportError(f"{root} is not a directory; pass an AxBench setting folder such as "
                                 "axbench/concept10/prod_2b_l20_v1 or <hub-repo>/2b/l20.")
    if (root / REPOSITORY_FILES["train"]).is_file():
        rotated = sorted((root / "generate").glob("train_data_*.parquet"))
        if rotated:
            raise AxBenchImportError(f"{root / 'generate'} holds rotated shards ({rotated[0].name}, …) beside "
                                     "train_data.parquet; importing rotated AxBench runs is not supported — "
                                     "use the Hub layout of the same dataset instead.")
        if not (root / REPOSITORY_METADATA).is_file():
            raise AxBenchImportError(f"{root / REPOSITORY_METADATA} is missing; the repository layout needs "
                                     "it beside train_data.parquet (copy it from the same AxBench run).")
        files = {split: root / rel for split, rel in REPOSITORY_FILES.items() if (root / rel).is_file()}
        return AxBenchSource(root, "repository", files, root / REPOSITORY_METADATA)
    if (root / HUB_FILES["train"]).is_file():
        files = {split: root / rel for split, rel in HUB_FILES.items() if (root / rel).is_file()}
        return AxBenchSource(root, "hub", files, None)
    settings = sorted({str(path.parent.parent.relative_to(root)) for path in root.glob("*/*/train/data.parquet")}
                      | {str(path.parent.parent.relative_to(root)) for path in root.glob("*/generate/train_data.parquet")})
    if settings:
        raise AxBenchImportError(f"{root} holds several settings ({', '.join(settings)}); import one at a time, "
                                 f"e.g. {root / settings[0]}.")
    raise AxBenchImportError(f"{root} has neither {REPOSITORY_FILES['train']} (repository layout) nor "
                             f"{HUB_FILES['train']} (Hub layout); pass the folder of one AxBench setting.")


def read_axbench(source_dir: str | Path) -> AxBenchData:
    """Read and validate one setting; the parts must agree (every concept id in the data has a concept
    whose description is its positives' `output_concept`)."""
    source = locate_axbench(source_dir)
    tables = {}
    for split, path in source.split_files.items():
        table = pq.read_table(path)
        validate_frame(table.to_pandas(), split, source=str(path))
        tables[split] = conform_table(table, split)
    if source.metadata is not None:
        concepts = load_concepts(source.metadata, dedupe=False)  # ids index the data: drop nothing
    else:
        concepts = _concepts_from_data(source, tables)
        logger.info("%s: Hub layout has no metadata.jsonl; read %d concepts off the data", source.root,
                    len(concepts))
    _check_agreement(source, tables, concepts)
    return AxBenchData(source, tables, concepts)


def steering_table(concepts: list[Concept], n: int, instructions: str) -> tuple[pa.Table, dict[str, object]]:
    """The steering split AxBench builds at evaluation time: per concept, `n` instructions of the steering pool
    sampled with the concept id as seed, the first half to select the factor, the rest held out. Returns the
    table and its provenance."""
    from axdata.generation.examples import steering_prompt_rows
    from axdata.generation.pools import load_pool
    from axdata.schema import table_from_frame

    pool = load_pool({"general": instructions})
    rows = [row for concept in concepts for row in steering_prompt_rows(concept, pool.general, instructions, n)]
    provenance = {"built_on_import": True, "steering_num_of_examples": n, "instructions": instructions,
                  "pool_size": len(pool.general), "pool_fingerprint": pool.fingerprint(),
                  "sampling": "numpy RandomState(concept_id).choice(len(pool), n, replace=False), as AxBench's "
                              "DataFrame.sample(n, random_state=concept_id); first half selection, rest held out"}
    return table_from_frame(pd.DataFrame(rows), "steering", source="built on import"), provenance


def import_axbench(source_dir: str | Path, out_dir: str | Path, config_name: str, *,
                   steering_num_of_examples: int | None = 10, steering_instructions: str = "shipped") -> ImportReport:
    """Import one AxBench setting into `<out_dir>/<config_name>/` (split shards + concepts.jsonl).

    AxBench data has no steering split (AxBench samples steering instructions when it evaluates), so one is
    built here, the same way (`steering_table`), from `steering_instructions` ('shipped', a local file, or the
    paper's `tatsu-lab/alpaca_eval`); `steering_num_of_examples=None` skips it. The provenance records how.
    """
    check_config_name(config_name)
    data = read_axbench(source_dir)
    steering_provenance = None
    if steering_num_of_examples is not None and "steering" not in data.tables:
        data.tables["steering"], steering_provenance = steering_table(data.concepts, steering_num_of_examples,
                                                                      steering_instructions)
    files = {split: write_split(table, out_dir, config_name, split) for split, table in data.tables.items()}
    files["concepts"] = write_concepts(data.concepts, out_dir, config_name)
    sources = list(data.source.split_files.values()) + ([data.source.metadata] if data.source.metadata else [])
    report = ImportReport(
        config=config_name,
        layout=data.source.layout,
        source_dir=data.source.root,
        out_dir=Path(out_dir),
        files=files,
        rows={split: table.num_rows for split, table in data.tables.items()},
        categories={split: _category_counts(table) for split, table in data.tables.items()},
        concepts=len(data.concepts),
        genres=_genre_counts(data.concepts),
        shared_negatives=_count_shared(data.tables["train"]),
        source_hashes={str(path.relative_to(data.source.root)): file_hash(path) for path in sources},
    )
    provenance = read_provenance(out_dir)
    provenance.setdefault("generator_model", "gpt-4o-mini (AxBench)")
    provenance.setdefault("source", "AxBench (stanfordnlp/axbench), imported losslessly")
    provenance.setdefault("source_hashes", {})[config_name] = report.source_hashes
    if steering_provenance is not None:
        provenance.setdefault("steering_split", {})[config_name] = steering_provenance
    write_provenance(provenance, out_dir)
    logger.info("%s", report.summary())
    return report


def _concepts_from_data(source: AxBenchSource, tables: dict[str, pa.Table]) -> list[Concept]:
    train = tables["train"].select(["concept_id", "output_concept", "concept_genre", "category"]).to_pandas()
    positives = train[train["category"] == "positive"]
    refs: dict[int, str] = {}
    if "latent" in tables:
        latent = tables["latent"].select(["concept_id", "sae_link"]).to_pandas().dropna()
        refs = {int(cid): _single(source, "sae_link", cid, group["sae_link"]) for cid, group in
                latent.groupby("concept_id", sort=True)}
    concepts = []
    for cid, group in positives.groupby("concept_id", sort=True):
        description = _single(source, "output_concept", cid, group["output_concept"])
        genres = tuple(dict.fromkeys(group["concept_genre"]))
        concepts.append(Concept(int(cid), description, refs.get(int(cid)), genres))
    return concepts


def _single(source: AxBenchSource, column: str, concept_id: object, values: pd.Series) -> str:
    distinct = pd.unique(values)
    if len(distinct) != 1:
        raise AxBenchImportError(f"{source.root}: concept {concept_id} has {len(distinct)} different {column} "
                                 f"values ({', '.join(repr(v) for v in distinct[:3])}); the Hub layout needs one "
                                 "per concept to rebuild the concept list — import the repository layout with "
                                 "its metadata.jsonl instead.")
    return str(distinct[0])


def _check_agreement(source: AxBenchSource, tables: dict[str, pa.Table], concepts: list[Concept]) -> None:
    by_id = {concept.concept_id: concept for concept in concepts}
    where = source.metadata or source.root
    for split, table in tables.items():
        frame = table.select(["concept_id", "output_concept", "category"]).to_pandas()
        unknown = sorted(set(frame["concept_id"]) - set(by_id) - {SHARED_NEGATIVE_ID})
        if unknown:
            raise AxBenchImportError(f"{source.split_files[split]}: concept ids {unknown[:10]} have no concept in "
                                     f"{where}; the data and the concept list come from different runs.")
        positives = frame[frame["category"] == "positive"]
        expected = positives["concept_id"].map(lambda cid: by_id[cid].concept)
        wrong = positives[positives["output_concept"] != expected]
        if len(wrong):
            row = wrong.iloc[0]
            raise AxBenchImportError(
                f"{source.split_files[split]}, row {wrong.index[0]}: positive of concept {row['concept_id']} "
                f"carries {row['output_concept']!r} but {where} names it "
                f"{by_id[row['concept_id']].concept!r}; the data and the concept list come from different runs.")


def _category_counts(table: pa.Table) -> dict[str, int]:
    if "category" not in table.column_names:  # the steering split holds prompts, not labelled examples
        return {}
    counts = Counter(table.column("category").to_pylist())
    return {category: counts[category] for category in CATEGORIES if counts[category]}


def _genre_counts(concepts: list[Concept]) -> dict[str, int]:
    counts = Counter(concept.genre for concept in concepts)
    named = {genre: counts[genre] for genre in GENRES if counts[genre]}
    return {**named, "unknown": counts[None]} if counts[None] else named


def _count_shared(table: pa.Table) -> int:
    return pc.sum(pc.equal(table.column("concept_id"), SHARED_NEGATIVE_ID)).as_py() or 0
