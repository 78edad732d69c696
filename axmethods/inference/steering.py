"""Steered generation for every (concept, prompt, factor) row of the `steering` split.

Rows of one batch carry different concepts and factors (one `RowSteering` per batch); each row is
sampled from its own seed (`row_seed`), so a re-run, a resumed run or a run with another batch size
gives the same generations. Factor-free steerers (prompt steering, LoRA, …) generate one sample per
prompt instead of one per factor (AxBench generated the same thing 14 times).

Completed batches are written as part files beside the output (`<out>.parts/`), atomically; a re-run with
the same settings skips them, and the final parquet (with provenance in its schema metadata) replaces the
parts once every batch is done.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub.utils import tqdm

from axdata.errors import InputError
from axdata.hashing import content_hash
from axdata.io import atomic_path
from axmethods.contract import Steerer, UnsteeredBaseline
from axmethods.dictionary import DictionarySteerer
from axmethods.distributed import broadcast, gather, is_main, rank, world_size
from axmethods.factors import AXBENCH_FACTORS
from axmethods.inference.compiled import CompiledSteering, steering_engine
from axmethods.inference.perplexity import generation_perplexity
from axmethods.inference.sampling import SamplingConfig, sample
from axmethods.methods.prompt import PromptSteerer
from axmethods.models import TargetModel

if TYPE_CHECKING:
    from axmethods.inference.sampling import Decoder

# The steerers live beside what they steer with (or, for the protocol and the unsteered baseline, in the result
# contract); they are importable from here too, where steering inference is.
__all__ = ["OUTPUT_COLUMNS", "PROVENANCE_KEY", "DictionarySteerer", "PromptSteerer", "Steerer", "UnsteeredBaseline",
           "plan_batches", "plan_rows", "read_provenance", "row_seed", "run_steering", "steered_prompts"]

logger = logging.getLogger(__name__)

# AxBench's 14 steering factors, exactly its sweep configs' `steering_factors` (spec §1.8 / §4.4); the one
# definition every default (run config, `infer steer`, `run_steering`) reads.
# `instruction` is always the steering split's original instruction (what the judge and reviewers rate the answer
# against, as AxBench's judge does with `original_prompt`); `model_instruction` is the user turn the model saw
# (the same text, except for prompt steering, which prepends the concept's steering prompt).
OUTPUT_COLUMNS = ("concept_id", "concept", "prompt_id", "half", "instruction", "model_instruction", "prompt", "factor",
                  "magnitude", "generation", "method", "seed", "perplexity")
# `perplexity`: of the generation's tokens given the original instruction's prompt, under the unsteered model
# (`axmethods.inference.perplexity`), computed batch by batch with the generations. Bump it when that changes, so
# part files of the older definition are not reused.
PERPLEXITY_VERSION = 1
PROVENANCE_KEY = b"axbench"


def row_seed(seed: int, concept_id: int, prompt_id: int, factor: float | None) -> int:
    """The sampling seed of one row: a hash of the run seed and the row's identity (not its position)."""
    digest = content_hash([seed, int(concept_id), int(prompt_id), None if factor is None else float(factor)])
    return int(digest, 16) % 2**63  # fits the int64 seed column


def steered_prompts(steering_split: pd.DataFrame, steerer: Steerer) -> pd.DataFrame:
    """The rows of the steering split whose concept `steerer` steers (all, unless it names `steered_concept_ids`)."""
    steered = getattr(steerer, "steered_concept_ids", None)
    if steered is None:
        return steering_split
    return steering_split[steering_split["concept_id"].astype(int).isin(steered)]


def plan_rows(steering_split: pd.DataFrame, steerer: Steerer, target: TargetModel, factors: Sequence[float],
              seed: int) -> pd.DataFrame:
    """One row per (concept, prompt, factor) of the concepts `steerer` steers — one per (concept, prompt) for a
    factor-free steerer."""
    kept = steered_prompts(steering_split, steerer)
    if kept.empty and not steering_split.empty:
        raise InputError(f"the {steerer.method} dictionary steers none of the steering split's concepts (its "
                         "unsteered_concept_ids, e.g. an output-score filter, cover them all); there is nothing to "
                         "steer.")
    skipped = steering_split["concept_id"].nunique() - kept["concept_id"].nunique()
    if skipped:  # logged here, once per steerer: callers may also filter with steered_prompts to check emptiness
        logger.info("%s: %d concept(s) of the steering split are detection-only in its dictionary and are not "
                    "steered", steerer.method, skipped)
    steering_split = kept
    # A suppression or attack split asks the model a rewritten instruction (`original_prompt`) and judges the
    # answer against the plain one (`judged_prompt`); a steering split judges what it asks.
    judged = steering_split["judged_prompt"] if "judged_prompt" in steering_split else steering_split["original_prompt"]
    base = pd.DataFrame({
        "concept_id": steering_split["concept_id"].astype("int64").to_numpy(),
        "concept": steering_split["input_concept"].to_numpy(),
        "prompt_id": steering_split["input_id"].astype("int64").to_numpy(),
        "half": steering_split["half"].to_numpy() if "half" in steering_split else None,
        "instruction": judged.to_numpy(),
        "model_instruction": steerer.instructions(steering_split),
    })
    # A steerer may put text in the system turn (a defence prompt placed there): `system_prompts`, optional.
    system_prompts = getattr(steerer, "system_prompts", None)
    systems = system_prompts(steering_split) if system_prompts is not None else [None] * len(base)
    base["prompt"] = [target.format_prompt(text, system=system) for text, system in zip(base["model_instruction"],
                                                                                      systems)]
    if steerer.factor_free:
        rows = base.assign(factor=np.nan)
    else:
        if not factors:
            raise InputError(f"{steerer.method} steers with factors but none were given; pass e.g. --factors 0.5,1,2.")
        rows = base.merge(pd.DataFrame({"factor": [float(f) for f in factors]}), how="cross")
    rows["seed"] = [row_seed(seed, c, p, None if np.isnan(f) else f)
                    for c, p, f in zip(rows["concept_id"], rows["prompt_id"], rows["factor"])]
    duplicated = rows.duplicated(["concept_id", "prompt_id", "factor"])
    if duplicated.any():
        raise InputError(f"the steering split repeats (concept_id, input_id) pairs, e.g. "
                         f"{rows.loc[duplicated, ['concept_id', 'prompt_id']].iloc[0].tolist()}; each needs one row.")
    return rows.sort_values(["concept_id", "prompt_id", "factor"], ignore_index=True)


def plan_batches(rows: pd.DataFrame, prompt_ids: Sequence[Sequence[int]], batch_size: int, *,
                 by_concept: bool = False) -> list[list[int]]:
    """Row indices of each batch: similar lengths share a batch (less padding).

    The order only depends on the rows, so resumes line up. With `by_concept` (steerers that swap a whole
    concept's weights in, e.g. full fine-tuning) every batch holds one concept's rows.
    """
    if not by_concept:
        order = sorted(range(len(rows)), key=lambda i: (-len(prompt_ids[i]), i))
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    concept_ids = rows["concept_id"].tolist()
    order = sorted(range(len(rows)), key=lambda i: (concept_ids[i], -len(prompt_ids[i]), i))
    batches: list[list[int]] = []
    for i in order:
        if not batches or len(batches[-1]) == batch_size or concept_ids[batches[-1][0]] != concept_ids[i]:
            batches.append([])
        batches[-1].append(i)
    return batches


def run_steering(target: TargetModel, steerer: Steerer, steering_split: pd.DataFrame, out: str | Path, *,
                 factors: Sequence[float] = AXBENCH_FACTORS, sampling: SamplingConfig | None = None,
                 batch_size: int = 32, seed: int = 42, progress: bool = True, engine: str = "eager") -> pd.DataFrame:
    """Generate every row, resuming from the part files of an interrupted run; returns and writes `out`.

    `engine`: "eager" (the default decode loop) or "compiled" (static KV cache, compiled step:
    `axmethods.inference.compiled`); the generations do not depend on it, so it is not part of the provenance.
    """
    out = Path(out)
    sampling = sampling or SamplingConfig()
    rows = plan_rows(steering_split, steerer, target, factors, seed)
    provenance = {
        "method": steerer.method, "model_id": target.model_id, "model_revision": target.revision, "seed": seed,
        **{f"sampling_{k}": v for k, v in asdict(sampling).items()}, "factors": [float(f) for f in factors],
        "factor_free": steerer.factor_free, "perplexity": PERPLEXITY_VERSION, **steerer.provenance(),
    }
    prompt_ids = [target.encode(prompt) for prompt in rows["prompt"]]
    batches = plan_batches(rows, prompt_ids, batch_size, by_concept=getattr(steerer, "batch_by_concept", False))
    run_id = content_hash({**provenance, "batch_size": batch_size, "rows": rows[["concept_id", "prompt_id", "factor",
                                                                                 "prompt"]].to_numpy().tolist()})
    intervener, decoder = steering_engine(engine, target, steerer, [len(ids) for ids in prompt_ids],
                                          sampling.max_new_tokens, batch_size)
    parts_dir = out.with_name(out.name + ".parts")
    parts = [parts_dir / f"{run_id}-{k:05d}.parquet" for k in range(len(batches))]
    # Rank 0 owns the part files: it says which batches are missing; under a distributed launcher each process
    # generates every N-th of them per round and rank 0 writes the round's parts (rows are seeded by identity,
    # so who generates a batch changes nothing).
    todo = broadcast([k for k, part in enumerate(parts) if not part.exists()] if is_main() else None)
    if len(todo) < len(batches):
        logger.info("Resuming %s: %d of %d batches already generated", out, len(batches) - len(todo), len(batches))
    processes = world_size()
    for start in tqdm(range(0, len(todo), processes), desc=f"steering {steerer.method}", unit="batch",
                      disable=not progress):
        mine = todo[start + rank()] if start + rank() < len(todo) else None
        generated = None if mine is None else _generate(target, intervener, rows.iloc[batches[mine]],
                                                        [prompt_ids[i] for i in batches[mine]], sampling, decoder)
        for k, frame in gather((mine, generated)):
            if is_main() and frame is not None:
                with atomic_path(parts[k]) as tmp:
                    frame.to_parquet(tmp, index=False)
    if not is_main():
        return pd.DataFrame(columns=list(OUTPUT_COLUMNS))  # rank 0 writes `out` (and returns it)
    result = pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)
    result = result.sort_values(["concept_id", "prompt_id", "factor"], ignore_index=True)[list(OUTPUT_COLUMNS)]
    table = pa.Table.from_pandas(result, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           PROVENANCE_KEY: json.dumps(provenance, default=str).encode()})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    shutil.rmtree(parts_dir, ignore_errors=True)
    logger.info("Wrote %d steered generations of %s to %s", len(result), steerer.method, out)
    return result


def _generate(target: TargetModel, steerer: Steerer | CompiledSteering, batch_rows: pd.DataFrame,
              batch_prompt_ids: list[list[int]], sampling: SamplingConfig, decoder: Decoder | None = None
              ) -> pd.DataFrame:
    """One batch of steered generations (the rows with their magnitude, generation and method)."""
    context, magnitudes = steerer.intervene(target, batch_rows)
    with context:
        tokens = sample(target, batch_prompt_ids, batch_rows["seed"].tolist(), sampling, decoder)
    # Judged against the original instruction, so measured against it too (prompt steering's preamble aside).
    instruction_ids = [target.encode(target.format_prompt(text)) for text in batch_rows["instruction"]]
    return batch_rows.assign(
        magnitude=magnitudes.astype(np.float64),
        generation=target.tokenizer.batch_decode(tokens, skip_special_tokens=True),
        method=steerer.method,
        perplexity=generation_perplexity(target, instruction_ids, tokens, batch_size=len(tokens)),
    )


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance stored in a steering parquet's schema metadata."""
    metadata = pq.read_schema(path).metadata or {}
    if PROVENANCE_KEY not in metadata:
        raise InputError(f"{path} has no axbench provenance; it was not written by run_steering.")
    return json.loads(metadata[PROVENANCE_KEY])
