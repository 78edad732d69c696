"""Columns, `datasets.Features` and validation of every dataset split — the one place that defines them.

Column names follow AxBench (`input, output, output_concept, concept_genre, category, dataset_category,
concept_id`, latent eval adds `sae_link, sae_id`) so AxBench data imports without renaming; our
provenance columns are nullable, and a nullable column may be absent from a frame (AxBench data has
none of them) — `conform_table` adds it as nulls. Columns the schema does not know are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa

from axdata.errors import InputError

EMPTY_CONCEPT = "EEEEE"  # AxBench's `output_concept` for rows that carry no concept (shared negatives)
SHARED_NEGATIVE_ID = -1  # AxBench's `concept_id` for the target model's own answers shared by all concepts
GENRES = ("text", "code", "math")
CATEGORIES = ("positive", "negative", "hard negative")
DATASET_CATEGORIES = ("instruction", "continuation")  # AxBench only produces "instruction" in production
HALVES = ("selection", "heldout")  # steering prompts: factor selection on one half, the score on the other
# Concept suppression and its attacks (RePS): opt-in splits, not generated unless a config names them.
SUPPRESSION_SPLITS = ("suppression", "attack_shots")
AXBENCH_SPLITS = ("train", "latent", "latent_imbalance", "steering", "preference")
SPLITS = AXBENCH_SPLITS + SUPPRESSION_SPLITS

_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64()}


@dataclass(frozen=True)
class Column:
    """One column of a split: its `datasets.Value` dtype, whether it may be null, and its allowed values."""

    name: str
    dtype: str  # a key of _ARROW_TYPES
    description: str
    nullable: bool = False
    allowed: tuple[str, ...] | None = None

    @property
    def feature(self) -> datasets.Value:
        return datasets.Value(self.dtype)


def _core(categories: tuple[str, ...], output: str = "output") -> tuple[Column, ...]:
    return (
        Column("input", "string", "The instruction, raw (no chat template)."),
        Column(output, "string", "The response to `input`."),
        Column("output_concept", "string",
               f"The concept the response carries; '{EMPTY_CONCEPT}' for none, 'word//meaning' for hard negatives."),
        Column("concept_genre", "string", "Genre of the concept (and of the instruction).", allowed=GENRES),
        Column("category", "string", "Label of the row with respect to `concept_id`.", allowed=categories),
        Column("dataset_category", "string", "Kind of prompt.", allowed=DATASET_CATEGORIES),
        Column("concept_id", "int64",
               f"Id of the concept the row belongs to; {SHARED_NEGATIVE_ID} for shared negatives."),
    )


_SAE = (
    Column("sae_link", "string", "Reference of the concept (a Neuronpedia feature URL for SAE concepts).",
           nullable=True),
    Column("sae_id", "int64", "Feature index of the concept in its SAE.", nullable=True),
)
PROVENANCE = (
    Column("template_hash", "string", "Hash of the prompt template that produced the row.", nullable=True),
    Column("generator_model", "string", "Model that wrote the response.", nullable=True),
    Column("sample_seed", "int64", "Seed that sampled the instruction and the response.", nullable=True),
)
PROVENANCE_COLUMNS = tuple(column.name for column in PROVENANCE)

# Column order follows AxBench's files, so an imported frame keeps its column order.
SPLIT_COLUMNS: dict[str, tuple[Column, ...]] = {
    "train": _core(("positive", "negative")) + PROVENANCE,
    "latent": _core(CATEGORIES) + _SAE + PROVENANCE,
    "latent_imbalance": _core(("negative",)) + _SAE + PROVENANCE,
    "steering": (
        Column("dataset_name", "string", "Source of the steering prompts (AxBench: 'AlpacaEval')."),
        Column("concept_id", "int64", "Id of the concept to steer towards."),
        Column("input_concept", "string", "Description of the concept to steer towards."),
        Column("input_id", "int64", "Index of the prompt within the concept's prompts."),
        Column("original_prompt", "string", "The instruction, raw (no chat template)."),
        Column("half", "string", "Which half the prompt belongs to.", allowed=HALVES),
        Column("steering_prompt", "string", "Instruction that asks for the concept (prompt-steering baseline).",
               nullable=True),
    ) + _SAE + PROVENANCE,
    "preference": _core(("positive",), output="winning_output")
    + (Column("losing_output", "string", "The target model's own answer to `input`."),) + PROVENANCE,
    # Instruction k of a concept is its steering instruction k (same pool, same draw, same half).
    "suppression": (
        Column("dataset_name", "string", "Name of the prompt set: 'suppression'."),
        Column("concept_id", "int64", "Id of the concept to keep out of the answer."),
        Column("input_concept", "string", "Description of the concept (or the rule) to suppress."),
        Column("input_id", "int64", "Index of the prompt within the concept's prompts (= its steering input_id)."),
        Column("original_prompt", "string", "The plain instruction, raw (no chat template); instruction relevance "
               "is judged against it."),
        Column("blended_prompt", "string", "The instruction rewritten so that an answer to it brings the concept "
               "up (or follows the rule): the model's input when suppression is tested."),
        Column("half", "string", "Which half the prompt belongs to (as in the steering split).", allowed=HALVES),
        Column("defence_prompt", "string", "Instruction telling a model to keep the concept out of its answer (to "
               "strictly avoid the rule); one per concept, the same on each of its rows."),
        # Nullable: datasets written before it existed still load; only the rewrite defences need it.
        Column("defence_rewrite", "string", "A second such instruction (RePS's suppress_rewrite): the same request "
               "asked again (for a rule, asked in other words); one per concept, the same on each of its rows.",
               nullable=True),
    ) + _SAE + PROVENANCE,
    "attack_shots": (
        Column("concept_id", "int64", "Id of the concept the examples carry."),
        Column("input_concept", "string", "Description of the concept (or the rule)."),
        Column("shot_id", "int64", "Position of the example in the concept's many-shot list (0..n-1); an "
               "n-shot attack uses shots 0..n-1."),
        Column("question", "string", "A user question that is not about the concept."),
        Column("answer", "string", "An answer to `question` that brings the concept in (follows the rule)."),
    ) + PROVENANCE,
}
# Per split, the columns whose values identify a row: each combination appears once.
_ROW_KEYS = {"suppression": ("concept_id", "input_id"), "attack_shots": ("concept_id", "shot_id")}


class SchemaError(InputError):
    """A frame does not match its split's schema; `problems` holds (column, problem) pairs."""

    def __init__(self, split: str, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.split = split
        self.problems = problems
        self.source = source
        where = f" ({source})" if source else ""
        lines = "\n".join(f"  - column {column!r}: {problem}" for column, problem in problems)
        super().__init__(f"{split!r} split{where} does not match the schema in axdata.schema:\n{lines}")


def columns(split: str) -> tuple[Column, ...]:
    """The schema columns of `split`, in file order."""
    if split not in SPLIT_COLUMNS:
        raise InputError(f"Unknown split {split!r}; the splits are {', '.join(SPLITS)}.")
    return SPLIT_COLUMNS[split]


def features(split: str, extra: pa.Schema | None = None) -> datasets.Features:
    """`datasets.Features` of `split`: the schema columns, then the `extra` columns (types as given)."""
    known = {column.name: column.feature for column in columns(split)}
    if extra is not None:
        extra = pa.schema([field for field in extra if field.name not in known])
        known.update(datasets.Features.from_arrow_schema(extra))
    return datasets.Features(known)


def validate_frame(df: pd.DataFrame, split: str, *, source: str | None = None) -> None:
    """Raise `SchemaError` naming the split, each offending column and the fix; return None when valid.

    Checks presence (nullable columns may be absent), dtypes, nulls, allowed values, and the id rules:
    ids are ≥ -1, positives belong to a concept (id ≥ 0), and in `train` the shared negatives (id -1)
    are negatives whose output_concept is EMPTY_CONCEPT.
    """
    problems: list[tuple[str, str]] = []
    for column in columns(split):
        if column.name not in df.columns:
            if not column.nullable:
                problems.append((column.name, "missing; add the column (see axdata.schema.SPLIT_COLUMNS)"))
            continue
        problems.extend((column.name, p) for p in _column_problems(df[column.name], column))
    if not problems:
        problems.extend(_id_problems(df, split))
        problems.extend(_key_problems(df, split))
    if problems:
        raise SchemaError(split, problems, source)


def _column_problems(values: pd.Series, column: Column) -> list[str]:
    nulls = values.isna()
    if nulls.all() and column.nullable:
        return []
    if column.dtype == "string":
        # An object column passes only if every value really is a str (it may hold bytes or numbers).
        is_text = (values[~nulls].map(type).eq(str).all() if values.dtype == object
                   else pd.api.types.is_string_dtype(values.dtype))
        if not is_text:
            return [f"dtype {values.dtype} is not string; store text as str"]
    elif not (pd.api.types.is_integer_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)):
        hint = " (nulls made it float: use .astype('Int64'))" if column.nullable else ""
        return [f"dtype {values.dtype} is not an integer dtype{hint}; convert with .astype('int64')"]
    problems = []
    if nulls.any() and not column.nullable:
        problems.append(f"{int(nulls.sum())} null values (first at row {_first(nulls)}); every row needs a value")
    if column.allowed is not None:
        bad = ~values.isin(column.allowed) & ~nulls
        if bad.any():
            shown = ", ".join(repr(v) for v in pd.unique(values[bad])[:5])
            problems.append(f"{int(bad.sum())} values outside {column.allowed} (first at row {_first(bad)}: "
                            f"{shown}); use one of the allowed values")
    return problems


def _id_problems(df: pd.DataFrame, split: str) -> list[tuple[str, str]]:
    if "concept_id" not in df.columns:
        return []
    ids = df["concept_id"]
    checks = [(ids < SHARED_NEGATIVE_ID,
               f"ids below {SHARED_NEGATIVE_ID}", f"ids are ≥ 0, or {SHARED_NEGATIVE_ID} for shared negatives")]
    if "category" in df.columns:
        checks.append(((df["category"] == "positive") & (ids < 0),
                       "positive rows without a concept", "give each positive its concept's id"))
    if split == "train" and {"category", "output_concept"} <= set(df.columns):
        not_shared = (df["category"] != "negative") | (df["output_concept"] != EMPTY_CONCEPT)
        checks.append(((ids == SHARED_NEGATIVE_ID) & not_shared,
                       f"rows with id {SHARED_NEGATIVE_ID} that are not shared negatives",
                       f"shared negatives have category 'negative' and output_concept {EMPTY_CONCEPT!r}"))
    if split in SUPPRESSION_SPLITS:
        checks.append((ids < 0, "rows without a concept", "give each row its concept's id (≥ 0)"))
    problems = []
    for mask, problem, fix in checks:
        if mask.any():
            problems.append(("concept_id", f"{int(mask.sum())} {problem} (first at row {_first(mask)}); {fix}"))
    return problems


def _key_problems(df: pd.DataFrame, split: str) -> list[tuple[str, str]]:
    """Row keys are unique and non-negative; a suppression concept has one defence prompt and one rewrite (the
    defences read them per concept, so two different ones would make the result depend on which row is read)."""
    keys = _ROW_KEYS.get(split)
    if keys is None or df.empty:
        return []
    problems = []
    index = keys[1]
    negative = df[index] < 0
    if negative.any():
        problems.append((index, f"{int(negative.sum())} negative values (first at row {_first(negative)}); "
                                "number a concept's rows 0, 1, 2, …"))
    repeated = df.duplicated(list(keys), keep="first")
    if repeated.any():
        problems.append((index, f"{int(repeated.sum())} repeated ({', '.join(keys)}) pairs (first at row "
                                f"{_first(repeated)}); give each row of a concept its own {index}"))
    for column in ("defence_prompt", "defence_rewrite") if split == "suppression" else ():
        if column not in df.columns:
            continue  # a nullable column may be absent
        several = df.groupby("concept_id")[column].nunique(dropna=False)
        several = several[several > 1]
        if len(several):
            problems.append((column, f"{len(several)} concepts have more than one {column} text (first: concept "
                                     f"{several.index[0]}); write the concept's one text on each of its rows"))
    return problems


def _first(mask: pd.Series) -> Any:
    return mask.index[mask.to_numpy().argmax()]


def conform_table(table: pa.Table, split: str) -> pa.Table:
    """`table` in the split's layout: schema columns first (cast to their types, absent nullable ones
    added as nulls), then the other columns untouched; Features stored in the schema metadata so that
    `datasets` reads the file back with the same Features. Values are never changed — a cast that would
    change one fails."""
    present = set(table.column_names)
    arrays, fields = [], []
    for column in columns(split):
        arrow_type = _ARROW_TYPES[column.dtype]
        if column.name in present:
            arrays.append(table.column(column.name).cast(arrow_type, safe=True))
        elif column.nullable:
            arrays.append(pa.nulls(table.num_rows, arrow_type))
        else:
            raise SchemaError(split, [(column.name, "missing; add the column (see axdata.schema.SPLIT_COLUMNS)")])
        fields.append(pa.field(column.name, arrow_type))
    known = {column.name for column in columns(split)}
    for field in table.schema:
        if field.name not in known:
            arrays.append(table.column(field.name))
            fields.append(field)
    # Arrow types of the other columns stay exactly as read; only the Features metadata is added.
    metadata = features(split, pa.schema(fields)).arrow_schema.metadata
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def table_from_frame(df: pd.DataFrame, split: str, *, source: str | None = None) -> pa.Table:
    """Validate `df` and convert it to an Arrow table in the split's layout (see `conform_table`)."""
    validate_frame(df, split, source=source)
    return conform_table(pa.Table.from_pandas(df, preserve_index=False), split)
