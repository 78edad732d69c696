"""Latent (concept-detection) inference: every concept of every dictionary scored in one forward pass.

Each text is a chat transcript (instruction + response, AxBench's detector input). Per token t after the
chat prefix, concept c scores `activation(h_t · w_c + b_c)` with h_t the output of block L; a text's score
is the max over those tokens (padding ignored), kept with the argmax token. The forward stops at the
deepest layer read, and the scores of all n concepts come from one [tokens, d] × [d, n] matmul. With
`score_decimals` (the reference protocol: 3) every token score is first rounded as AxBench's `predict_latent`
did (`round(x, 3)` per token, then `max`, the first token of equal maxima).

Modes (AxBench §4.1 / §4.2):
- `latent`: each row of the `latent` split scored for its own concept → one output row per (row, method).
- `latent_imbalance`: every concept scored on the shared negative pool (`latent_imbalance` split) plus its
  own positives from the `latent` split → (pool + positives of c) rows per concept and method. Pool rows
  carry concept_id −1 (shared negatives) and `scored_concept_id` = the concept whose detector scored them.

Calibration (`calibrate`): m_c = max score over concept c's `latent` rows (all categories); for SAE rows the
max JumpReLU activation (score + θ, AxBench's unit). Where that
maximum is ≤ 0 (a ReLU read-out that never fires, or a raw projection that is negative everywhere) or the
concept has no rows, AxBench used a constant 50; we use the median of the dictionary's positive maxima
(same scale as the concepts that did fire) unless a `fallback` constant is given (50.0 reproduces
AxBench), and record which concepts fell back in `calibration_info`.

Detector routing (each result class's `detector`, `axmethods.results`): `latent_inference` takes the results of
every method and scores each with its own detector, on the same rows and with the same output columns:
- `residual` (`SteeringDictionary`: DiffMean, PCA, Probe, ReFT-r1, SAE, …): the one-pass residual read-out above;
- `text` (`BagOfWords`): its `score_texts` on the same chat transcripts; `max_token_index` / `max_token` are null;
- `attribution` (`AttributionDetector`: IG, IxG): its `score_pairs`, one attribution forward and backward per
  (text, concept) pair actually scored (never all concepts of every text), max over the same tokens;
- `target-model` (`RelevanceRater`, prompt detection): the target model itself, through a chat backend (by
  default a `TransformersChatBackend` of the target), rates each (row, concept) pair on the row's `output`;
  answers without a rating stay NaN (or score `unrated_score`: the reference protocol's −1), are counted in
  `result.attrs["nan_scores"]` and logged; token columns null;
- none (steering prompts, adapters and other steering-only results): skipped with an info log.
Only residual dictionaries have a steering calibration (`calibrate`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from huggingface_hub.utils import tqdm

from axdata.errors import InputError
from axdata.io import atomic_path
from axdata.schema import SHARED_NEGATIVE_ID
from axmethods.contract import ConceptResult, Detector
from axmethods.dictionary import DictionaryError, SteeringDictionary
from axmethods.distributed import gather, shard, world_size
from axmethods.hooks import layer_outputs
from axmethods.models import TargetModel, pad_batch, pad_token_id

if TYPE_CHECKING:
    from axmethods.methods.prompt import RelevanceRater

logger = logging.getLogger(__name__)

LATENT_MODES = ("latent", "latent_imbalance")
# Bound on the [B, T, n_concepts] score block materialised at once (elements), so 16k-concept
# dictionaries score in concept chunks instead of allocating gigabytes.
_MAX_SCORE_ELEMENTS = 1 << 26


@dataclass
class LatentScores:
    """Max-pooled scores of N texts for a dictionary's n concepts."""

    max_act: torch.Tensor  # [N, n] float32 ([N, 1] when `own_rows` is set)
    max_index: torch.Tensor  # [N, n] long, token index in the text's own (unpadded) token ids
    token_ids: list[list[int]]  # the texts' token ids, for the argmax tokens
    # [N] dictionary row kept per text when only each text's own concept was kept (`score_texts(own_rows=…)`):
    # then column 0 holds that row's score, and memory is O(N), not O(N × n) (40k rows × 500 concepts: 240 MB).
    own_rows: torch.Tensor | None = None


def score_texts(target: TargetModel, dictionaries: Sequence[SteeringDictionary], texts: Sequence[str], *,
                batch_size: int = 16, progress: bool = True,
                own_rows: Sequence[torch.Tensor | None] | None = None,
                score_decimals: int | None = None) -> list[LatentScores]:
    """Max-pooled scores of chat-formatted `texts` for all concepts of each dictionary (one pass per batch).

    `own_rows[k]` ([N] long, optional): keep only row `own_rows[k][i]` of dictionary k for text i (the same
    values, gathered per batch), so the result is [N, 1] instead of [N, n]. `score_decimals`: round every token
    score to that many decimals before the max (`round_scores`).
    """
    own_rows = list(own_rows) if own_rows is not None else [None] * len(dictionaries)
    for dictionary in dictionaries:
        dictionary.check_model(target)
    token_ids = [target.encode(text) for text in texts]
    too_short = [i for i, ids in enumerate(token_ids) if len(ids) <= target.prefix_length]
    if too_short:
        raise InputError(f"texts {too_short[:10]} have no tokens after the {target.prefix_length}-token chat prefix; "
                         "score chat transcripts (TargetModel.format_transcript), not bare strings.")
    dtype = target.dtype
    weights = [(d.weight.to(target.device, dtype), None if d.bias is None else d.bias.to(target.device))
               for d in dictionaries]
    width = [d.n_concepts if rows is None else 1 for d, rows in zip(dictionaries, own_rows)]
    max_act = [torch.empty(len(texts), w) for w in width]
    max_index = [torch.empty(len(texts), w, dtype=torch.long) for w in width]
    # Longest first, so each batch pads to similar lengths and an out-of-memory shows up at once.
    order = sorted(range(len(texts)), key=lambda i: -len(token_ids[i]))
    layers = {d.layer for d in dictionaries}
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    # Under a distributed launcher each process scores every N-th batch (the same batches as one process would,
    # so the scores are bit-identical); the shards are gathered below.
    for batch in tqdm(shard(batches), desc="latent scores", unit="batch", disable=not progress):
        input_ids, attention_mask = pad_batch([token_ids[i] for i in batch], pad_token_id(target), side="right")
        hidden = layer_outputs(target, layers, input_ids, attention_mask)
        positions = torch.arange(input_ids.shape[1])[None, :]
        valid = (attention_mask.bool() & (positions >= target.prefix_length)).to(target.device)
        index = torch.tensor(batch)
        for k, (dictionary, (weight, bias)) in enumerate(zip(dictionaries, weights)):
            values, argmax = _max_pool(dictionary, hidden[dictionary.layer], weight, bias, valid, score_decimals)
            if own_rows[k] is not None:
                keep = own_rows[k][index][:, None].to(values.device)
                values, argmax = values.gather(1, keep), argmax.gather(1, keep)
            max_act[k][index] = values.cpu()
            max_index[k][index] = argmax.cpu()
    if world_size() > 1:
        _gather_rows(shard(batches), max_act, max_index)
    return [LatentScores(a, i, token_ids, rows) for a, i, rows in zip(max_act, max_index, own_rows)]


def _gather_rows(own_batches: list[list[int]], max_act: list[torch.Tensor], max_index: list[torch.Tensor]) -> None:
    """Fill every process's score tensors with the rows the other processes scored."""
    rows = torch.tensor([i for batch in own_batches for i in batch], dtype=torch.long)
    parts = gather((rows, [a[rows] for a in max_act], [i[rows] for i in max_index]))
    for part_rows, part_act, part_index in parts:
        for k in range(len(max_act)):
            max_act[k][part_rows] = part_act[k]
            max_index[k][part_rows] = part_index[k]


def round_scores(scores: torch.Tensor, decimals: int) -> torch.Tensor:
    """float32 `scores` rounded half-to-even to `decimals` places, as Python's `round(float(x), decimals)` rounds
    each x (AxBench's `round(x, 3)`): x·10^d is exact in float64 for d ≤ 12 (24 significant bits times at most
    28), so the rounding decision is the decimal one. Returned as float32, the nearest to Python's result, which
    keeps the order and the ties of the rounded values of magnitude below 8192."""
    scale = 10.0 ** decimals
    return (torch.round(scores.double() * scale) / scale).float()


def _max_pool(dictionary: SteeringDictionary, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              valid: torch.Tensor, decimals: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    # Rounding works on a float64 copy of the block: half the elements per block keeps the memory bound.
    budget = _MAX_SCORE_ELEMENTS if decimals is None else _MAX_SCORE_ELEMENTS // 2
    chunk = max(1, budget // (hidden.shape[0] * hidden.shape[1]))
    values, indices = [], []
    for start in range(0, weight.shape[0], chunk):
        scores = (hidden @ weight[start:start + chunk].T).float()  # [B, T, chunk]
        if bias is not None:
            scores = scores + bias[start:start + chunk]
        scores = dictionary.activate(scores)
        if decimals is None:
            best, where = scores.masked_fill(~valid[..., None], float("-inf")).max(dim=1)
        else:  # round before the max; argmax (unlike max) promises the first of equal maxima, as AxBench's index
            scores = round_scores(scores, decimals).masked_fill(~valid[..., None], float("-inf"))
            where = scores.argmax(dim=1)
            best = scores.gather(1, where[:, None]).squeeze(1)
        values.append(best)
        indices.append(where)
    return torch.cat(values, dim=1), torch.cat(indices, dim=1)


# One (text index, concept row) → (scores, token index or None) lookup per dictionary.
_Scorer = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]
ChatBackendArg = Any  # a ChatBackend, or a zero-argument factory of one (called only when needed)


def latent_inference(target: TargetModel, dictionaries: Sequence[Detector | ConceptResult], latent: pd.DataFrame, *,
                     mode: str = "latent", imbalance_pool: pd.DataFrame | None = None, batch_size: int = 16,
                     progress: bool = True, chat_backend: ChatBackendArg = None,
                     score_decimals: int | None = None, unrated_score: float | None = None) -> pd.DataFrame:
    """Scores of the eval rows for each dictionary (see the module docstring), one frame for all methods.

    Results of any method: each is routed to its class's detector; steering-only ones are skipped.
    `chat_backend`: a ChatBackend or a factory of one for target-model detectors (PromptDetection); default a
    `TransformersChatBackend` of `target`. `score_decimals`: residual token scores rounded before max-pooling
    (the reference protocol's 3; module docstring). `unrated_score`: the score of a target-model answer without a
    rating (the reference protocol's −1, ranked below every rated text); None leaves it NaN (excluded, counted).

    Columns: method, layer, concept_id, category, score, max_token_index, max_token, row_id (row of the source
    split), source_split, and — in `latent` mode — the eval row's input, output, output_concept,
    concept_genre, dataset_category. `max_token_index` / `max_token` are null for non-residual detectors.
    `result.attrs["nan_scores"]` counts NaN scores per method (target-model answers without a rating).
    `write_latent_inference` writes the same rows to a parquet file part by part instead of holding them.
    """
    nan_scores: dict[str, int] = {}
    frames = list(_scored_parts(target, dictionaries, latent, mode=mode, imbalance_pool=imbalance_pool,
                                batch_size=batch_size, progress=progress, chat_backend=chat_backend,
                                nan_scores=nan_scores, score_decimals=score_decimals, unrated_score=unrated_score))
    if not frames:
        result = pd.DataFrame({c: pd.Series(dtype=object) for c in _LEADING})
    else:
        result = pd.concat(frames, ignore_index=True)
    result.attrs["nan_scores"] = nan_scores
    return result


def write_latent_inference(path: str | Path | None, target: TargetModel, dictionaries: Sequence[Detector | ConceptResult],
                           latent: pd.DataFrame, *, mode: str = "latent", imbalance_pool: pd.DataFrame | None = None,
                           batch_size: int = 16, progress: bool = True, chat_backend: ChatBackendArg = None,
                           concepts_per_part: int = 64, score_decimals: int | None = None,
                           unrated_score: float | None = None) -> dict[str, Any]:
    """`latent_inference(...)` written to the parquet file `path` (atomically) part by part, never held whole.

    `latent_imbalance` rows are n_concepts × pool per method (Concept500: 500 × 3,600 = 1.8M rows per method, a
    few hundred MB each as a frame): residual dictionaries are written `concepts_per_part` concepts at a time.
    The file reads back (`pd.read_parquet`) equal to the frame `latent_inference` returns. `path=None` scores
    and counts without writing (the processes other than the main one under a distributed launcher).
    Returns {"rows": rows written, "nan_scores": NaN scores per method}.
    """
    nan_scores: dict[str, int] = {}
    parts = _scored_parts(target, dictionaries, latent, mode=mode, imbalance_pool=imbalance_pool,
                          batch_size=batch_size, progress=progress, chat_backend=chat_backend, nan_scores=nan_scores,
                          concepts_per_part=concepts_per_part, score_decimals=score_decimals,
                          unrated_score=unrated_score)
    detecting = [d.detector for d in dictionaries if d.detector]
    # pd.concat of residual (int64) and other (nullable Int64) token indices gives Int64: cast every part alike.
    token_index = "int64" if all(kind in _TOKEN_DETECTORS for kind in detecting) else "Int64"
    rows = 0
    if path is None:
        for part in parts:
            rows += len(part)
        return {"rows": rows, "nan_scores": nan_scores}
    with atomic_path(Path(path)) as tmp:
        writer: pq.ParquetWriter | None = None
        try:
            for part in parts:
                part = part.astype({"max_token_index": token_index})
                if writer is None:
                    schema = pa.Schema.from_pandas(part, preserve_index=False)
                    # An all-null text column of the first part (a non-residual max_token) is a string column.
                    schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema],
                                       metadata=schema.metadata)
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(pa.Table.from_pandas(part, schema=writer.schema, preserve_index=False))
                rows += len(part)
            if writer is None:
                pd.DataFrame({c: pd.Series(dtype=object) for c in _LEADING}).to_parquet(tmp, index=False)
        finally:
            if writer is not None:
                writer.close()
    return {"rows": rows, "nan_scores": nan_scores}


def _scored_parts(target: TargetModel, dictionaries: Sequence[Detector | ConceptResult], latent: pd.DataFrame, *,
                  mode: str, imbalance_pool: pd.DataFrame | None, batch_size: int, progress: bool,
                  chat_backend: ChatBackendArg, nan_scores: dict[str, int], concepts_per_part: int | None = None,
                  score_decimals: int | None = None, unrated_score: float | None = None) -> Iterator[pd.DataFrame]:
    """The rows of `latent_inference`, method by method (in `concepts_per_part` concept parts for residual
    dictionaries in `latent_imbalance` mode; None: one part per method), columns in their final order.
    Parts of one method follow its scored concept ids in ascending order, as the whole frame's sort does."""
    if mode not in LATENT_MODES:
        raise InputError(f"mode {mode!r} is unknown; use one of {', '.join(LATENT_MODES)}")
    kinds = [d.detector or "none" for d in dictionaries]
    unknown = sorted({kind for kind in kinds} - {"residual", "attribution", "text", "target-model", "none"})
    if unknown:
        raise DictionaryError(f"no latent inference for detector(s) {unknown}; known: residual, attribution, text, "
                              "target-model.")
    for dictionary, kind in zip(dictionaries, kinds):
        if kind == "none":
            logger.info("%s: steering-only method (no detector); skipped in latent inference", dictionary.method)
    if mode == "latent":
        texts_frame = latent.reset_index(drop=True).assign(row_id=np.arange(len(latent)), source_split="latent")
    else:
        if imbalance_pool is None:
            raise InputError("mode 'latent_imbalance' needs imbalance_pool (the latent_imbalance split's negatives).")
        positives = latent[latent["category"] == "positive"]
        texts_frame = pd.concat([
            imbalance_pool.assign(row_id=np.arange(len(imbalance_pool)), source_split="latent_imbalance"),
            positives.assign(row_id=positives.index.to_numpy(), source_split="latent"),
        ], ignore_index=True)
    texts = [target.format_transcript(i, o) for i, o in zip(texts_frame["input"], texts_frame["output"])]
    residual = [d for d, kind in zip(dictionaries, kinds) if kind == "residual"]
    # `latent` mode scores each row for its own concept only: keep just that column (O(rows), not O(rows × n)).
    own_rows = [_own_rows(d, texts_frame) for d in residual] if mode == "latent" else None
    residual_scores = dict(zip(map(id, residual), score_texts(target, residual, texts, batch_size=batch_size,
                                                              progress=progress, own_rows=own_rows,
                                                              score_decimals=score_decimals))) if residual else {}
    # Detectors that name a token (residual read-outs, attributions) get the argmax token's text.
    names_tokens = any(kind in _TOKEN_DETECTORS for kind in kinds)
    vocabulary = _token_strings(target) if names_tokens else None
    token_ids = [target.encode(text) for text in texts] if "attribution" in kinds else None
    backend = None
    any_frame = False
    for dictionary, kind in zip(dictionaries, kinds):
        if kind == "none":
            continue
        if kind == "residual":
            scorer = _residual_scorer(residual_scores[id(dictionary)])
        elif kind == "attribution":
            scorer = _attribution_scorer(dictionary, target, token_ids, batch_size, progress, score_decimals)
        elif kind == "text":
            scorer = _matrix_scorer(dictionary.score_texts(texts))
        else:
            if backend is None:
                backend = _resolve_backend(chat_backend, target)
            scorer = _target_model_scorer(dictionary, backend, texts_frame["output"].tolist())
        scores = residual_scores.get(id(dictionary))
        ids = scores.token_ids if scores is not None else token_ids if kind == "attribution" else None
        if mode == "latent":
            frames: Iterator[pd.DataFrame] = iter([_own_concept_rows(dictionary, scorer, texts_frame, ids,
                                                                     vocabulary)])
        elif kind == "residual" and concepts_per_part is not None:
            _warn_unknown_positives(dictionary, texts_frame)
            by_id = np.argsort(np.asarray(dictionary.concept_ids), kind="stable")
            frames = (_imbalance_rows(dictionary, scorer, texts_frame, ids, vocabulary,
                                      part=by_id[start:start + concepts_per_part])
                      for start in range(0, len(by_id), concepts_per_part))
        else:
            frames = iter([_imbalance_rows(dictionary, scorer, texts_frame, ids, vocabulary)])
        nan_scores[dictionary.method], total = 0, 0
        for frame in frames:
            nan_scores[dictionary.method] += int(frame["score"].isna().sum())
            total += len(frame)
            if unrated_score is not None and kind == "target-model":  # counted above, scored as the reference did
                frame = frame.assign(score=frame["score"].fillna(unrated_score))
            frame = frame.assign(method=dictionary.method, layer=dictionary.layer)
            any_frame = True
            yield frame[_LEADING + [c for c in frame.columns if c not in _LEADING]]
        if nan_scores[dictionary.method]:
            logger.warning("%s: %d of %d scores are NaN (answers without a parsable rating)", dictionary.method,
                           nan_scores[dictionary.method], total)
    if not any_frame:
        logger.warning("no dictionary with a detector among %s", [d.method for d in dictionaries])


_TOKEN_DETECTORS = ("residual", "attribution")
_LEADING = ["method", "layer", "concept_id", "category", "score", "max_token_index", "max_token", "row_id",
            "source_split"]


def _resolve_backend(chat_backend: ChatBackendArg, target: TargetModel) -> Any:
    if chat_backend is None:
        from axmethods.chat_backend import TransformersChatBackend

        return TransformersChatBackend(target)
    if not hasattr(chat_backend, "complete_many") and callable(chat_backend):
        return chat_backend()
    return chat_backend


def _own_rows(dictionary: SteeringDictionary, frame: pd.DataFrame) -> torch.Tensor | None:
    """Each row's own concept row in `dictionary`; None when it lacks one (`_own_concept_rows` then says so)."""
    try:
        return dictionary.rows(frame["concept_id"].tolist())
    except DictionaryError:
        return None


def _residual_scorer(scores: LatentScores) -> _Scorer:
    def lookup(text_index: np.ndarray, concept_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        t, r = torch.from_numpy(text_index), torch.from_numpy(concept_rows)
        if scores.own_rows is not None:  # only each text's own row was kept
            if not torch.equal(scores.own_rows[t], r):
                raise ValueError("these latent scores kept each text's own concept only; score again without "
                                 "own_rows to look up other concepts.")
            r = torch.zeros_like(r)
        return scores.max_act[t, r].numpy(), scores.max_index[t, r].numpy()
    return lookup


def _attribution_scorer(detector: Any, target: TargetModel, token_ids: list[list[int]] | None, batch_size: int,
                        progress: bool, decimals: int | None) -> _Scorer:
    assert token_ids is not None  # encoded above whenever an attribution detector is scored
    # AxBench rounded IG / IxG token scores to 3 decimals too: the same rounding as the residual read-out's.
    rounding = None if decimals is None else lambda scores: round_scores(scores, decimals)

    def lookup(text_index: np.ndarray, concept_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return detector.score_pairs(target, token_ids, text_index, concept_rows, batch_size=batch_size,
                                    progress=progress, round_tokens=rounding)
    return lookup


def _matrix_scorer(matrix: torch.Tensor) -> _Scorer:
    def lookup(text_index: np.ndarray, concept_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return matrix[torch.from_numpy(text_index), torch.from_numpy(concept_rows)].float().numpy(), None
    return lookup


def _target_model_scorer(rater: RelevanceRater, backend: Any, outputs: list[str]) -> _Scorer:
    names = [concept.concept for concept in rater.concepts]

    def lookup(text_index: np.ndarray, concept_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        ratings = rater.score_texts(backend, [names[r] for r in concept_rows], [outputs[t] for t in text_index])
        return np.asarray(ratings, dtype=np.float32), None
    return lookup


def _token_columns(index: np.ndarray | None, token_ids: list[list[int]] | None, text_index: np.ndarray,
                   vocabulary: np.ndarray | None) -> dict[str, Any]:
    if index is None or token_ids is None or vocabulary is None:
        return {"max_token_index": pd.array([pd.NA] * len(text_index), dtype="Int64"),
                "max_token": np.full(len(text_index), None, dtype=object)}
    return {"max_token_index": index, "max_token": _tokens_at(token_ids, text_index, index, vocabulary)}


def _own_concept_rows(dictionary: SteeringDictionary, scorer: _Scorer, frame: pd.DataFrame,
                      token_ids: list[list[int]] | None, vocabulary: np.ndarray | None) -> pd.DataFrame:
    concept_ids = frame["concept_id"].tolist()
    try:
        rows = dictionary.rows(concept_ids)
    except DictionaryError as error:
        raise DictionaryError(f"{error}: the latent split scores each row for its own concept, so the dictionary "
                              "must cover every concept of the split; train it on the same dataset config.") from None
    text_index = np.arange(len(frame))
    values, index = scorer(text_index, rows.numpy())
    keep = [c for c in ("input", "output", "output_concept", "concept_genre", "dataset_category") if c in frame]
    return pd.DataFrame({
        "concept_id": frame["concept_id"].to_numpy(),
        "category": frame["category"].to_numpy(),
        "score": values,
        **_token_columns(index, token_ids, text_index, vocabulary),
        "row_id": frame["row_id"].to_numpy(),
        "source_split": frame["source_split"].to_numpy(),
        **{c: frame[c].to_numpy() for c in keep},
    })


def _warn_unknown_positives(dictionary: SteeringDictionary, frame: pd.DataFrame) -> np.ndarray:
    """Mask of the `latent` positives whose concept the dictionary has (warns about the others)."""
    positive_ids = frame["concept_id"].to_numpy()[(frame["source_split"] == "latent").to_numpy()]
    known = np.isin(positive_ids, dictionary.concept_ids)
    if not known.all():
        logger.warning("%s: %d positives belong to concepts outside the dictionary; they are not scored",
                       dictionary.method, int((~known).sum()))
    return known


def _imbalance_rows(dictionary: SteeringDictionary, scorer: _Scorer, frame: pd.DataFrame,
                    token_ids: list[list[int]] | None, vocabulary: np.ndarray | None,
                    part: np.ndarray | None = None) -> pd.DataFrame:
    """`part` (dictionary rows): only those concepts' rows — the pool scored by them and their own positives."""
    pool = np.flatnonzero((frame["source_split"] == "latent_imbalance").to_numpy())
    positives = np.flatnonzero((frame["source_split"] == "latent").to_numpy())
    positive_ids = frame["concept_id"].to_numpy()[positives]
    known = _warn_unknown_positives(dictionary, frame) if part is None else np.isin(positive_ids,
                                                                                      dictionary.concept_ids)
    positives, positive_ids = positives[known], positive_ids[known]
    positive_rows = dictionary.rows(positive_ids.tolist()).numpy()
    concepts = np.arange(dictionary.n_concepts) if part is None else np.asarray(part)
    if part is not None:
        mine = np.isin(positive_rows, concepts)
        positives, positive_rows = positives[mine], positive_rows[mine]
    n = len(concepts)
    # Concept-major: every concept against the whole pool, then each positive against its own concept.
    text_index = np.concatenate([np.tile(pool, n), positives])
    concept_rows = np.concatenate([np.repeat(concepts, len(pool)), positive_rows])
    values, index = scorer(text_index, concept_rows)
    scored = np.asarray(dictionary.concept_ids)[concept_rows]
    is_pool = np.arange(len(text_index)) < n * len(pool)
    result = pd.DataFrame({
        # Pool rows are the shared negatives (concept_id -1), scored once by every concept's detector.
        "concept_id": np.where(is_pool, SHARED_NEGATIVE_ID, scored),
        "scored_concept_id": scored,
        "category": np.where(is_pool, "negative", "positive"),
        "score": values,
        **_token_columns(index, token_ids, text_index, vocabulary),
        "row_id": frame["row_id"].to_numpy()[text_index],
        "source_split": frame["source_split"].to_numpy()[text_index],
    })
    return result.sort_values(["scored_concept_id", "category"], kind="stable", ignore_index=True)


def _token_strings(target: TargetModel) -> np.ndarray:
    """Decoded text of every vocabulary id, so argmax tokens are looked up rather than decoded one by one."""
    tokenizer = target.tokenizer
    return np.asarray(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]), dtype=object)


def _tokens_at(token_ids: list[list[int]], texts: np.ndarray, positions: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.fromiter((t for ids in token_ids for t in ids), dtype=np.int64, count=int(lengths.sum()))
    return vocabulary[flat[offsets[texts] + positions]]


def calibrate(dictionary: SteeringDictionary, latent_scores: pd.DataFrame, *,
              fallback: float | None = None) -> SteeringDictionary:
    """The dictionary with calibration m_c = max `latent`-mode score of concept c (rule: module docstring).

    A dictionary whose method fixes its calibration (`calibration_fixed`) is returned as it is.
    """
    if not isinstance(dictionary, SteeringDictionary):
        raise DictionaryError(f"The {dictionary.method} {dictionary.KIND} has no residual detector, so it has no "
                              "steering calibration; calibrate residual-stream dictionaries only.")
    if dictionary.calibration_fixed:
        return dictionary
    rows = latent_scores[(latent_scores["method"] == dictionary.method)
                         & (latent_scores.get("layer", dictionary.layer) == dictionary.layer)
                         & (latent_scores.get("source_split", "latent") == "latent")]
    maxima = rows.groupby("concept_id")["score"].max().reindex(dictionary.concept_ids)
    values = torch.tensor(maxima.to_numpy(dtype=np.float64, na_value=np.nan), dtype=torch.float32)
    needs_fallback = ~(values > 0)  # also catches NaN (no rows)
    if fallback is None:
        fired = values[~needs_fallback]
        if not len(fired):
            raise DictionaryError(
                f"No concept of the {dictionary.method} dictionary has a positive max activation on the latent rows, "
                "so there is no scale to calibrate with; pass fallback=<magnitude> (AxBench used 50.0) or check "
                "that the dictionary and the data belong to the same model and layer."
            )
        fallback_value, rule = float(fired.quantile(0.5)), "median of the positive maxima"
    else:
        fallback_value, rule = float(fallback), "constant"
    calibration = torch.where(needs_fallback, torch.tensor(fallback_value), values)
    threshold = dictionary.config.get("jumprelu_threshold")
    if threshold is not None:
        # SAE rows score ReLU(pre − θ); AxBench's magnitude is the JumpReLU activation itself, pre = score + θ.
        calibration = torch.where(needs_fallback, calibration,
                                  calibration + torch.tensor(threshold, dtype=torch.float32))
    fell_back = [cid for cid, flag in zip(dictionary.concept_ids, needs_fallback.tolist()) if flag]
    if fell_back:
        logger.warning("%s: %d concepts have no positive max activation (%s…); calibrated with %s = %.4g",
                       dictionary.method, len(fell_back), fell_back[:5], rule, fallback_value)
    statistic = "max JumpReLU activation (score + threshold) over the concept's latent rows" if threshold is not None \
        else "max score over the concept's latent rows"
    info = {"source": "latent", "statistic": statistic, "rows": len(rows),
            "fallback_rule": rule, "fallback_value": fallback_value, "fallback_concepts": fell_back}
    return dictionary.with_calibration(calibration, info)
