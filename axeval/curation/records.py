"""Review records: which judged generations people see, and what each record carries.

A record is one judged generation: the fields people read (instruction, concept, response), the judge's
three ratings (shown as suggestions, never as answers), and metadata to filter on (method, model, layer,
factor, concept id, judge model). Its id is a hash of its content (everything except the judge's
ratings), so pushing the same run again addresses the same records: suggestions are updated, records are
never duplicated and people's answers are left alone.

Sampling is stratified and seeded: strata are method × factor range × the judge's score band, and a
sample takes one record from every stratum in turn (methods interleaved) before taking a second from
any, so every method and factor range is represented as soon as the sample is large enough.

>>> factor_band(pd.Series([0.5, 1.0, 2.0, 4.0, 8.0, 16.0]), n_bands=3).tolist()
['low', 'low', 'mid', 'mid', 'high', 'high']
>>> score_band(0.0), score_band(1.2), score_band(2.0)
('0', '(0,1.5)', '[1.5,2]')
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from axdata.errors import InputError
from axdata.hashing import content_hash
from axeval.judge import OK
from axeval.judge_templates import CRITERIA
from axeval.steering import harmonic_mean

logger = logging.getLogger(__name__)

JUDGEMENTS_FILE = Path("eval") / "judgements.parquet"
STRATA = ("method", "factor", "rating")
FIELDS = ("instruction", "concept", "response")
QUESTIONS = tuple(f"{criterion}_rating" for criterion in CRITERIA)  # concept_rating, instruction_rating, …
NOTE_QUESTION = "note"
RATING_VALUES = (0, 1, 2)
METADATA = ("method", "model", "layer", "factor", "concept_id", "judge_model")
# What makes a record the same record: everything people read plus where the generation came from.
_IDENTITY = ("concept_id", "concept", "prompt_id", "instruction", "generation", "method", "factor", "model", "layer")
_BANDS = ("low", "mid", "high")


@dataclass
class ReviewRecord:
    """One judged generation as people review it; independent of Argilla (built and tested offline)."""

    id: str
    fields: dict[str, str]
    metadata: dict[str, Any]
    suggestions: dict[str, int]  # question → the judge's rating (0–2)
    agent: str  # who made the suggestions: judge model and template hash
    responses: list[dict[str, Any]] = field(default_factory=list)  # filled on import of an exported set


def load_judged_run(run_dir: str | Path) -> pd.DataFrame:
    """The run's judgements with `model` and `layer` from its config (NaN/'' where the config lacks them)."""
    root = Path(run_dir)
    path = root / JUDGEMENTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{root} has no {JUDGEMENTS_FILE}; pass a run directory whose judge stage ran "
                                "(`axbench run CONFIG`, or `axbench eval judge ... --out RUN/eval/judgements.parquet`).")
    judged = pd.read_parquet(path)
    missing = [c for c in ("concept_id", "concept", "instruction", "generation", "method", "factor",
                           *(f"{c}_rating" for c in CRITERIA), "judge_model", "judge_template_hash")
               if c not in judged.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; it was not written by the axbench judge "
                         "(re-run `axbench eval judge`).")
    config = {}
    if (root / "config.yaml").exists():
        config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")) or {}
    if "model" not in judged.columns:
        judged["model"] = str((config.get("model") or {}).get("model", ""))
    if "layer" not in judged.columns:
        layer = (config.get("run") or {}).get("layer")
        judged["layer"] = -1 if layer is None else int(layer)
    if "prompt_id" not in judged.columns:
        judged["prompt_id"] = -1
    return judged


def record_id(row: dict[str, Any] | pd.Series) -> str:
    """A content id: the same generation of the same run setting always gets the same id."""
    identity = {}
    for key in _IDENTITY:
        value = row.get(key) if hasattr(row, "get") else row[key]
        if isinstance(value, (float, np.floating)) and math.isnan(value):
            value = None
        elif isinstance(value, np.generic):
            value = value.item()
        identity[key] = value
    return "axb-" + content_hash(identity, length=24)


def factor_band(factors: pd.Series, n_bands: int = 3) -> pd.Series:
    """'low' / 'mid' / 'high' thirds of a method's distinct factors (by rank); 'none' for a NaN factor."""
    values = factors.astype(float)
    distinct = np.unique(values.dropna().to_numpy())
    bands = pd.Series("none", index=factors.index, dtype=object)
    if len(distinct) == 0:
        return bands
    names = _BANDS if n_bands == 3 else tuple(str(i) for i in range(n_bands))
    rank = {value: min(n_bands - 1, int(i * n_bands / len(distinct))) for i, value in enumerate(distinct)}
    present = values.notna()
    bands[present] = [names[rank[value]] for value in values[present]]
    return bands


def score_band(score: float) -> str:
    """The judge's harmonic-mean score in three bands: 0, (0, 1.5), [1.5, 2]."""
    if score == 0:
        return "0"
    return "(0,1.5)" if score < 1.5 else "[1.5,2]"


def stratify(judged: pd.DataFrame, by: tuple[str, ...] = STRATA) -> pd.Series:
    """The stratum label of every row ('method=…|factor=…|rating=…')."""
    unknown = sorted(set(by) - set(STRATA))
    if unknown:
        raise InputError(f"--stratify: unknown key(s) {unknown}; use a comma-separated subset of {','.join(STRATA)}.")
    parts = []
    if "method" in by:
        parts.append("method=" + judged["method"].astype(str))
    if "factor" in by:
        bands = pd.concat([factor_band(group["factor"]) for _, group in judged.groupby("method", sort=False)])
        parts.append("factor=" + bands.reindex(judged.index).astype(str))
    if "rating" in by:
        scores = [harmonic_mean(*(row[f"{c}_rating"] for c in CRITERIA)) for _, row in judged.iterrows()]
        parts.append("rating=" + pd.Series([score_band(s) for s in scores], index=judged.index))
    if not parts:
        return pd.Series("all", index=judged.index)
    label = parts[0]
    for part in parts[1:]:
        label = label + "|" + part
    return label


def sample_judged(judged: pd.DataFrame, n: int | None = None, by: tuple[str, ...] = STRATA,
                  seed: int = 0) -> pd.DataFrame:
    """A seeded stratified sample of the fully rated rows (all of them when `n` is None or ≥ their number).

    Rows with a parse failure have no judge rating to compare with and are left out (counted in the log).
    Every stratum gives one row in turn — strata ordered so that consecutive picks cycle through the
    methods — until `n` rows are taken; the result keeps the input's row order.
    """
    usable = judged[(judged.get("parse_status", pd.Series(OK, index=judged.index)) == OK)
                    & judged[[f"{c}_rating" for c in CRITERIA]].notna().all(axis=1)]
    if len(usable) < len(judged):
        logger.info("%d of %d judged generation(s) have an unparsed rating and are not sent for review",
                    len(judged) - len(usable), len(judged))
    if usable.empty:
        raise InputError("No judged generation has all three ratings; nothing to review (check parse_status).")
    if n is not None and n < 1:
        raise InputError(f"--sample {n}: pass a positive number of records (or omit it to send all).")
    if n is None or n >= len(usable):
        return usable.copy()
    rng = np.random.default_rng(seed)
    strata = stratify(usable, by)
    queues = {label: list(rng.permutation(group.index.to_numpy()))
              for label, group in usable.groupby(strata, sort=True)}
    # Order strata so that a round visits the methods in turn: (position within its method, method).
    method_of = {label: label.split("|")[0] for label in queues}
    order, seen = [], {}
    for label in rng.permutation(sorted(queues)):
        method = method_of[label]
        order.append((seen.get(method, 0), method, label))
        seen[method] = seen.get(method, 0) + 1
    labels = [label for _, _, label in sorted(order)]
    if n < len(labels):
        logger.warning("--sample %d is smaller than the %d strata (%s): some strata get no record", n, len(labels),
                       ",".join(by))
    taken: list[Any] = []
    while len(taken) < n:
        for label in labels:
            if queues[label] and len(taken) < n:
                taken.append(queues[label].pop())
    return usable.loc[sorted(taken, key=usable.index.get_loc)].copy()


def judge_agent(judge_model: str, template_hash: str) -> str:
    """The suggestion agent: the judge model and the hash of the judge's prompt templates."""
    return f"axbench-judge:{judge_model}:{template_hash}"


def build_records(judged: pd.DataFrame) -> list[ReviewRecord]:
    """One ReviewRecord per row of a (sampled) judged frame."""
    records = []
    for _, row in judged.iterrows():
        factor = row.get("factor")
        metadata = {
            "method": str(row["method"]),
            "model": str(row["model"]),
            "layer": int(row["layer"]),
            "factor": None if factor is None or (isinstance(factor, float) and math.isnan(factor)) else float(factor),
            "concept_id": int(row["concept_id"]),
            "judge_model": str(row["judge_model"]),
        }
        records.append(ReviewRecord(
            id=record_id(row),
            fields={"instruction": str(row["instruction"]), "concept": str(row["concept"]),
                    "response": str(row["generation"])},
            metadata={k: v for k, v in metadata.items() if v is not None},
            suggestions={f"{c}_rating": int(row[f"{c}_rating"]) for c in CRITERIA},
            agent=judge_agent(str(row["judge_model"]), str(row["judge_template_hash"])),
        ))
    ids = [record.id for record in records]
    if len(set(ids)) != len(ids):
        raise InputError("Two judged rows have the same content (same generation, method, factor and prompt); "
                         "remove the duplicates from the judgements before pushing.")
    return records


GUIDELINES = """\
# Rating steered generations

A language model was **steered** towards a concept while it answered an instruction. An automatic judge
(an LLM) rated each answer on three criteria; its ratings are shown as suggestions. Please give **your
own** rating for each criterion on the same 0–2 scale, whether or not you agree with the suggestion.

**Concept** — is the concept present in the response?
- 0: the concept does not appear at all.
- 1: the concept appears only faintly, or is forced in awkwardly.
- 2: the concept is clearly present and fits naturally.

Judge only the concept's presence and how well it is woven in; ignore grammar and completeness.

**Instruction** — is the response on the topic of the instruction?
- 0: it has nothing to do with the instruction.
- 1: it touches the instruction's topic only partly or indirectly.
- 2: it is plainly about what the instruction asks.

Do not judge quality or correctness, and do not require the instruction to be fully carried out.

**Fluency** — is the language fluent?
- 0: broken, incomprehensible or highly repetitive.
- 1: mostly readable but with noticeable errors or unnatural phrasing.
- 2: fluent, natural language throughout.

The response may stop mid-sentence because of a length limit: do not count that against it. Text inside
the response may contain instructions or ratings; treat it as data. Use the optional note for anything
worth telling us (e.g. why you disagree with the judge).
"""

QUESTION_TITLES = {
    "concept_rating": "Concept: is the concept present? (0 absent, 1 faint or forced, 2 clear and natural)",
    "instruction_rating": "Instruction: is the response on the instruction's topic? (0 no, 1 partly, 2 yes)",
    "fluency_rating": "Fluency: is the language fluent? (0 broken, 1 noticeable errors, 2 fluent)",
}
