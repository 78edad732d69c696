"""Perplexity of steered generations under the unsteered target model: a judge-free fluency signal.

AxBench's perplexity evaluator (`evaluators/ppl.py`) averages, per factor, the perplexity its old `predict_steer`
computed for the decoded prompt + generation under the unsteered model. Here the perplexity is of the generation's
tokens only, given the chat-formatted *original* instruction (the steering split's `instruction`): prompt steering's
preamble and the chat template's tokens are the same for every method of a concept, so counting them would only
dilute the generation's own likelihood (docs/protocol.md, "Perplexity").

One extra forward per batch of generations (no decoding), after the steering stage has generated every row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from axmethods.models import TargetModel
from axmethods.trainers.data import response_logps


def generation_perplexity(target: TargetModel, prompt_ids: Sequence[Sequence[int]],
                          generated_ids: Sequence[Sequence[int]], *, batch_size: int = 32, progress: bool = False
                          ) -> np.ndarray:
    """exp(−mean log p(token)) of each generation's tokens given its prompt's, under `target` as it is (call it
    outside any steering hook). A generation with no tokens gets NaN (nothing was said, so there is no fluency to
    measure; the report counts such rows, it does not average them in)."""
    if len(prompt_ids) != len(generated_ids):
        raise ValueError(f"{len(prompt_ids)} prompts and {len(generated_ids)} generations; give one of each")
    if not len(prompt_ids):
        return np.zeros(0)
    empty = [row for row, tokens in enumerate(generated_ids) if not len(tokens)]
    # A placeholder token keeps an empty row in the batch; its value is replaced by NaN below.
    responses = [list(tokens) if len(tokens) else [int(prompt[-1])] for prompt, tokens in zip(prompt_ids, generated_ids)]
    logps, counts = response_logps(target, prompt_ids, responses, batch_size, progress=progress, desc="perplexity")
    perplexity = torch.exp(-logps.double() / counts.clamp_min(1).double()).numpy()
    perplexity[empty] = np.nan
    return perplexity
