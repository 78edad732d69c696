"""Preference pairs as training rows: tokenised, with per-concept batches and precomputed reference log-likelihoods.

The `preference` split (spec §1.6) holds, per concept, the instruction `input`, the concept response
`winning_output` (y_c) and the target model's own answer `losing_output` (y). `preference_frame` makes one
from a `train` split when a dataset has none (AxBench's Concept10 import, for instance): the positives'
outputs win, the target model's greedy answers lose.

The base model is frozen, so log p_ref(y|x) never changes during training: it is computed once per pair
before the first step (no-grad, batched), not once per step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import pandas as pd
import torch
from huggingface_hub.utils import tqdm

from axdata.concepts import Concept
from axdata.errors import InputError
from axmethods.inference.sampling import SamplingConfig, sample
from axmethods.models import TargetModel, pad_batch, pad_token_id

logger = logging.getLogger(__name__)

PREFERENCE_COLUMNS = ("input", "winning_output", "losing_output", "concept_id")


class PreferenceDataError(InputError):
    """The preference pairs cannot be built or do not cover the concepts to train."""


def check_preference_frame(frame: pd.DataFrame, concepts: Sequence[Concept], source: str, *,
                           with_losing: bool = True) -> pd.DataFrame:
    """The rows of `frame` that belong to `concepts`, or an error naming what is missing and the fix.

    `with_losing=False` (the LM objective) needs no `losing_output`.
    """
    needed = set(PREFERENCE_COLUMNS) - (set() if with_losing else {"losing_output"})
    missing = needed - set(frame.columns)
    if missing:
        raise PreferenceDataError(f"{source} lacks columns {sorted(missing)}; pass the `preference` split or build it "
                                  "with axmethods.trainers.preference_frame(target, train_split, concepts).")
    wanted = {c.concept_id for c in concepts}
    rows = frame[frame["concept_id"].isin(wanted)]
    absent = sorted(wanted - set(rows["concept_id"]))
    if absent:
        raise PreferenceDataError(f"{source} has no preference pairs for concepts {absent[:10]}; generate the "
                                  "preference split for them (axbench data generate) or drop them.")
    responses = ["winning_output", "losing_output"] if with_losing else ["winning_output"]
    empty = np.logical_or.reduce([rows[c].fillna("").astype(str).str.strip().eq("").to_numpy() for c in responses])
    if empty.any():
        logger.warning("%s: dropping %d pairs with an empty response", source, int(empty.sum()))
        rows = rows[~empty]
    return rows.reset_index(drop=True)


def positives_frame(train_df: pd.DataFrame, concepts: Sequence[Concept]) -> pd.DataFrame:
    """The concepts' train positives as winning outputs: all the LM objective needs (no losing answers)."""
    ids = {c.concept_id for c in concepts}
    positives = train_df[(train_df["category"] == "positive") & train_df["concept_id"].isin(ids)]
    if positives.empty:
        raise PreferenceDataError("the train split has no positives for the concepts to train; nothing to pair.")
    return positives.rename(columns={"output": "winning_output"}).reset_index(drop=True)


def preference_frame(target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept], *,
                     max_new_tokens: int = 128, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Preference pairs from a `train` split: each positive wins over the target model's greedy answer."""
    positives = positives_frame(train_df, concepts)
    instructions = positives["input"].astype(str).tolist()
    unique = list(dict.fromkeys(instructions))
    prompts = [target.encode(target.format_prompt(text)) for text in unique]
    order = sorted(range(len(unique)), key=lambda i: -len(prompts[i]))
    answers: dict[str, str] = {}
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    for start in tqdm(range(0, len(order), batch_size), desc="losing outputs (target model, greedy)",
                      disable=not progress):
        batch = order[start:start + batch_size]
        tokens = sample(target, [prompts[i] for i in batch], [0] * len(batch), greedy)
        for i, text in zip(batch, target.tokenizer.batch_decode(tokens, skip_special_tokens=True)):
            answers[unique[i]] = text.strip()
    frame = positives.copy()
    frame["losing_output"] = [answers[text] for text in instructions]
    frame["losing_generator"] = target.model_id
    return frame.reset_index(drop=True)


@dataclass
class PairRows:
    """Tokenised pairs: row i belongs to concept index `concept[i]` (into the trained concept list)."""

    concept: list[int]
    prompt: list[list[int]]
    winning: list[list[int]]
    losing: list[list[int]]

    def __len__(self) -> int:
        return len(self.concept)

    def to_dataset(self, ref_winning: torch.Tensor, ref_losing: torch.Tensor) -> datasets.Dataset:
        return datasets.Dataset.from_dict({
            "concept_index": self.concept, "prompt_ids": self.prompt, "winning_ids": self.winning,
            "losing_ids": self.losing, "ref_winning_logp": ref_winning.tolist(), "ref_losing_logp": ref_losing.tolist(),
        })


def tokenize_pairs(target: TargetModel, frame: pd.DataFrame, concepts: Sequence[Concept], *,
                   max_prompt_length: int, max_response_length: int, with_losing: bool = True) -> PairRows:
    """AxBench's LM view (`TargetModel.encode_turn`); prompts keep their last `max_prompt_length` tokens, responses
    their first `max_response_length`."""
    index = {c.concept_id: i for i, c in enumerate(concepts)}
    rows = PairRows([], [], [], [])
    for record in frame.itertuples(index=False):
        rows.concept.append(index[int(record.concept_id)])
        prompt, winning = target.encode_turn(str(record.input), str(record.winning_output))
        rows.prompt.append(prompt[-max_prompt_length:])
        rows.winning.append(winning[:max_response_length])
        losing = getattr(record, "losing_output", None)
        rows.losing.append(target.encode(str(losing))[:max_response_length] if with_losing else [])
    empty = [i for i in range(len(rows)) if not rows.winning[i] or (with_losing and not rows.losing[i])]
    if empty:
        raise PreferenceDataError(f"{len(empty)} pairs have a response that encodes to no tokens (e.g. row {empty[0]})")
    return rows


@dataclass
class SequenceBatch:
    """Prompts left-padded and responses right-padded, so every response starts at the same column.

    The RePS family's and HyperSteer's batch layout (a preference pair is two such sequences, winning and
    losing); ReFT-r1 / SSV keep AxBench's right-padded one (`axmethods.methods.lm_training.LMCollator` says why).

    That lets the model compute logits for the response columns only (`logits_to_keep`): the vocabulary
    projection and its softmax are a large share of a small model's step, and prompt logits are never used.
    """

    input_ids: torch.Tensor  # [N, P + R]
    attention_mask: torch.Tensor  # [N, P + R]
    position_ids: torch.Tensor  # [N, P + R], padding-aware
    response_mask: torch.Tensor  # [N, R] bool: response column j holds a real token
    prompt_mask: torch.Tensor  # [N, P + R] bool: prompt tokens after the chat prefix
    prompt_width: int  # P

    @property
    def logits_to_keep(self) -> int:
        """Logits of the last R + 1 columns: position P − 1 predicts the first response token."""
        return self.response_mask.shape[1] + 1

    def to(self, device: torch.device) -> SequenceBatch:
        return SequenceBatch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                             self.response_mask.to(device), self.prompt_mask.to(device), self.prompt_width)


def pad_sequences(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad: int,
                  prefix_length: int) -> SequenceBatch:
    prompt_ids, prompt_attention = pad_batch(prompts, pad, side="left")
    response_ids, response_mask = pad_batch(responses, pad, side="right")
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_attention, response_mask], dim=1)
    prompt_mask = torch.cat([prompt_attention.cumsum(-1) > prefix_length,
                             torch.zeros_like(response_mask, dtype=torch.bool)], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return SequenceBatch(input_ids, attention_mask, position_ids, response_mask.bool(), prompt_mask,
                         prompt_ids.shape[1])


def forward_logits(model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """Logits of the response columns (and the column before them) only."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                 use_cache=False, logits_to_keep=batch.logits_to_keep).logits


def sequence_logps(logits: torch.Tensor, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the response tokens' log-probabilities per sequence, and the number of response tokens.

    `logits` are `forward_logits`' [N, R + 1, V]: column j predicts response token j (the last is unused).
    """
    logits = logits[:, :-1].float()
    targets = batch.input_ids[:, batch.prompt_width:]
    logps = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)
    mask = batch.response_mask
    return (logps * mask).sum(-1), mask.sum(-1)


@torch.no_grad()
def response_logps(target: TargetModel, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                   batch_size: int, *, progress: bool = True, desc: str = "log-likelihoods"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(response | prompt) per row under the model as it is (no intervention), and the response's token count;
    longest sequences are batched together. The reference log-likelihoods of preference training and the perplexity
    of steered generations (`axmethods.inference.perplexity`) are both this."""
    pad = pad_token_id(target)
    order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(responses[i])))
    values, counts = torch.zeros(len(prompts)), torch.zeros(len(prompts), dtype=torch.long)
    was_training = target.model.training
    target.model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            chunk = order[start:start + batch_size]
            batch = pad_sequences([prompts[i] for i in chunk], [responses[i] for i in chunk], pad,
                                  target.prefix_length).to(target.device)
            logps, n = sequence_logps(forward_logits(target.model, batch), batch)
            values[chunk], counts[chunk] = logps.float().cpu(), n.cpu()
    finally:
        target.model.train(was_training)
    return values, counts


def reference_logps(target: TargetModel, rows: PairRows, batch_size: int, progress: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_ref(y_c|x) and log p_ref(y|x) per pair under the unsteered model."""
    values, _ = response_logps(target, rows.prompt + rows.prompt, rows.winning + rows.losing, batch_size,
                               progress=progress, desc="reference log-likelihoods")
    return values[:len(rows)], values[len(rows):]


class PairCollator:
    """Dataset rows → the tensors `RePSTrainer.compute_loss` needs (sequences are built there, per pair kind)."""

    def __call__(self, features: list[dict]) -> dict[str, object]:
        return {
            "concept_index": torch.tensor([f["concept_index"] for f in features], dtype=torch.long),
            "prompt_ids": [f["prompt_ids"] for f in features],
            "winning_ids": [f["winning_ids"] for f in features],
            "losing_ids": [f["losing_ids"] for f in features],
            "ref_winning_logp": torch.tensor([f["ref_winning_logp"] for f in features]),
            "ref_losing_logp": torch.tensor([f["ref_losing_logp"] for f in features]),
        }
