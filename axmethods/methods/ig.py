"""Integrated Gradients ("ig") and Input×Gradient ("ixg"): detection-only attribution baselines (AxBench `ig.py`).

AxBench's `IntegratedGradients` / `InputXGradients` train a linear head on the last token's final hidden state
(the language model frozen; `LMClassification`: `sigmoid(proj(hidden_states[-1][:, -1]))`) and score a text by
attributing the head's positive probability to the layer-L residuals of its tokens:

- Input×Gradient: token score `sum_d |h_td * df/dh_td|`;
- Integrated Gradients: the straight path `b + a (h - b)` for `a` in `linspace(0, 1, steps)` (steps = 10, both
  ends included; `b` = the input embedding of a single space at every position), token score
  `sum_d |(h_td - b_d) * mean_a df/dh_td(a)|`;

and a text's score is the max over its tokens (AxBench's `max_act`). The head is trained here by the Probe itself
(`axmethods.methods.probe`: same settings, loss and optimiser) on one "token" per text: the final-norm hidden
state of its last token, with the text's label. Differences from AxBench (docs/protocol.md): the Probe's head has no
bias and unit norm (AxBench's `nn.Linear` head had a bias), and token scores cover the tokens after the chat prefix
(every detector's read-out) where AxBench scored every token but the first.

Scoring needs a forward through the whole model and a backward through blocks L+1..N for every (text, concept)
pair, `steps` times for IG: the path points are batched together (`batch_size` sequences per forward).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from huggingface_hub.utils import tqdm

from axdata.concepts import Concept
from axdata.errors import InputError
from axmethods.activations import TokenActivations, text_key
from axmethods.contract import DictionaryError
from axmethods.dictionary import SteeringDictionary
from axmethods.hooks import Call, hook_output
from axmethods.methods.base import MethodConfigError
from axmethods.methods.probe import Probe, ProbeConfig
from axmethods.models import TargetModel, frozen, pad_batch, pad_token_id

logger = logging.getLogger(__name__)

Attribution = Literal["ig", "ixg"]
# What the head reads (recorded in the result's config, so a reader knows it is not a layer-L read-out).
HEAD_SITE = "final-norm hidden state of the last token"


@dataclass
class AttributionConfig(ProbeConfig):
    integration_steps: int = field(default=10, metadata={"help": "IG only: points on the straight path from the "
                                                                 "baseline to the input, both ends included "
                                                                 "(AxBench: 10)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.integration_steps < 1:
            raise MethodConfigError(f"integration_steps must be at least 1, got {self.integration_steps}")


class IntegratedGradients(Probe):
    """Trains the Probe's head on last-token final states; scores by integrated gradients at layer L."""

    name = "ig"
    config_class = AttributionConfig
    attribution: ClassVar[Attribution] = "ig"

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept], layer: int, *,
            collector: Any = None) -> AttributionDetector:
        # A layer-L token collector (shared by the activation methods of a run) reads the wrong site for this head.
        if collector is not None and not isinstance(collector, HeadStates):
            raise TypeError(f"{self.name} trains its head on last-token final states; do not pass it a layer-L "
                            "activation collector.")
        head = collector or HeadStates(target, layer, batch_size=self.config.activation_batch_size,
                                       max_length=self.config.max_length)
        dictionary = super().fit(target, train_df, concepts, layer, collector=head)
        return AttributionDetector.of(dictionary)

    def dictionary(self, target: TargetModel, concepts: Sequence[Concept], layer: int, weight: torch.Tensor,
                   **kwargs: Any) -> SteeringDictionary:
        extra = {**(kwargs.pop("extra_config", None) or {}), "attribution": self.attribution, "head": HEAD_SITE}
        return super().dictionary(target, concepts, layer, weight, extra_config=extra, **kwargs)


class InputXGradients(IntegratedGradients):
    """The same head; scores by |input × gradient| at layer L (one forward and backward per text)."""

    name = "ixg"
    attribution = "ixg"


class HeadStates:
    """A collector (the `ActivationMethod.fit` interface) of the head's input: one row per text, the final-norm
    hidden state of its last token (AxBench's `hidden_states[-1][:, -1]`). `keep` texts are cached, like the
    shared negatives of `ActivationCollector`."""

    def __init__(self, target: TargetModel, layer: int, *, batch_size: int = 16, max_length: int | None = None
                 ) -> None:
        self.target = target
        self.layer = target.validate_layer(layer)
        self.batch_size = batch_size
        self.max_length = max_length
        self.forward_texts = 0
        self._kept: dict[str, torch.Tensor] = {}

    def collect(self, texts: Sequence[str], keep: Sequence[bool] | None = None) -> TokenActivations:
        keys = [text_key(text) for text in texts]
        missing = {key: text for key, text in zip(keys, texts) if key not in self._kept}
        computed = dict(zip(missing, self._run(list(missing.values()))))
        for key, flag in zip(keys, keep or [False] * len(texts)):
            if flag and key in computed:
                self._kept[key] = computed[key]
        rows = [self._kept[key] if key in self._kept else computed[key] for key in keys]
        values = torch.stack(rows) if rows else torch.empty(0, self.target.hidden_size)
        return TokenActivations(values, torch.arange(len(rows) + 1, dtype=torch.long))

    def _run(self, texts: list[str]) -> list[torch.Tensor]:
        ids = [self.target.encode(text)[: self.max_length] for text in texts]
        out: list[torch.Tensor] = []
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start:start + self.batch_size]
            input_ids, attention_mask = pad_batch(batch, pad_token_id(self.target), side="right")
            with torch.inference_mode():
                final = _final_states(self.target, input_ids, attention_mask)
            last = attention_mask.sum(1) - 1  # right padding: the last real token
            out += list(final[torch.arange(len(batch)), last.to(final.device)].float().cpu())
        self.forward_texts += len(texts)
        return out


@dataclass
class PathAttribution:
    """Attributions of B texts: `signed` [B, T, d] = (h − b) ⊙ mean path gradient (token score: |·| summed over d;
    their plain sum ≈ f(h) − f(b), the completeness property), `probability` [S, B] = f at every path point."""

    signed: torch.Tensor
    probability: torch.Tensor

    @property
    def token_scores(self) -> torch.Tensor:
        """[B, T] AxBench's token score: the absolute attributions summed over the hidden dimension."""
        return self.signed.abs().sum(-1)


def path_attribution(target: TargetModel, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     head: torch.Tensor, alphas: torch.Tensor, baseline: torch.Tensor | None) -> PathAttribution:
    """Gradients of sigmoid(head_b · final state of text b's last token) w.r.t. the block-`layer` output of every
    token, at the points `b + a (h − b)` for each `a` in `alphas` (baseline None: 0), batched as S × B sequences.

    Right-padded `input_ids` / `attention_mask` [B, T]; `head` [B, d] (each text's own concept row).
    """
    steps, batch = len(alphas), input_ids.shape[0]
    kept: dict[str, torch.Tensor] = {}

    def on_path(hidden: torch.Tensor, _call: Call) -> torch.Tensor:
        # Every path copy of text b computed the same h below layer L; row s·B + b becomes b + a_s (h − b).
        real = hidden.detach().float()
        base = torch.zeros_like(real[:1, :1]) if baseline is None else baseline.to(real)
        scale = alphas.to(real).repeat_interleave(batch)[:, None, None]
        kept["h"], kept["b"] = real[:batch], base
        kept["x"] = (base + scale * (real - base)).requires_grad_(True)
        return kept["x"].to(hidden.dtype)

    with frozen(target.model), torch.enable_grad(), hook_output(target.residual_module(layer), on_path):
        final = _final_states(target, input_ids.repeat(steps, 1), attention_mask.repeat(steps, 1))
        last = (attention_mask.sum(1) - 1).repeat(steps).to(final.device)
        states = final[torch.arange(steps * batch, device=final.device), last].float()
        probability = torch.sigmoid((states * head.to(states).repeat(steps, 1)).sum(-1))
        (gradient,) = torch.autograd.grad(probability.sum(), kept["x"])
    mean_gradient = gradient.view(steps, batch, *gradient.shape[1:]).mean(0)
    return PathAttribution((kept["h"] - kept["b"]) * mean_gradient, probability.detach().view(steps, batch).cpu())


def _final_states(target: TargetModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d] the decoder's last hidden state (final norm applied), without the LM head."""
    decoder = target.model.base_model
    return decoder(input_ids=input_ids.to(target.device), attention_mask=attention_mask.to(target.device),
                   use_cache=False).last_hidden_state


def space_baseline(target: TargetModel) -> torch.Tensor:
    """AxBench's IG baseline: the input embedding of a single space ([d]; the mean if it takes several tokens)."""
    ids = target.tokenizer(" ", add_special_tokens=False)["input_ids"]
    if not ids:
        raise DictionaryError(f"{target.model_id}'s tokenizer encodes ' ' to no token; IG's baseline needs one.")
    with torch.inference_mode():
        embedding = target.model.get_input_embeddings()(torch.tensor(ids, device=target.device))
    return embedding.float().mean(0)


@dataclass
class AttributionDetector(SteeringDictionary):
    """IG / IxG's result: the head rows (`weight`, read at the last token's final state) and the layer whose
    residuals are attributed (`layer`). Saved in the dictionary layout; it detects by attribution, never steers."""

    KIND: ClassVar[str] = "attribution detector"
    detector: ClassVar[str] = "attribution"
    steers: ClassVar[bool] = False

    @classmethod
    def holds(cls, dictionary: SteeringDictionary) -> bool:
        return dictionary.config.get("attribution") in ("ig", "ixg")

    @classmethod
    def of(cls, dictionary: SteeringDictionary) -> AttributionDetector:
        """The dictionary (as loaded from its layer folder) read as the attribution detector it holds."""
        if not cls.holds(dictionary):
            raise DictionaryError(f"The {dictionary.method} dictionary has no attribution setting (ig / ixg).")
        return cls(**{item.name: getattr(dictionary, item.name) for item in dataclasses.fields(dictionary)})

    @property
    def calibration_fixed(self) -> bool:
        return True  # nothing to calibrate: it never steers

    @property
    def needs_calibration(self) -> bool:
        return False

    def steerer(self, *, kind: str = "addition", positions: str = "all") -> Any:
        raise DictionaryError(f"The {self.method} {self.KIND} is detection-only: it has no steering intervention. "
                              "Steer with a steering method's result (e.g. DiffMean, ReFT-r1); use this one with "
                              "`infer latent`.")

    @property
    def alphas(self) -> torch.Tensor:
        if self.config["attribution"] == "ixg":
            return torch.ones(1)
        return torch.linspace(0, 1, int(self.config.get("integration_steps", 10)))

    def score_pairs(self, target: TargetModel, token_ids: Sequence[Sequence[int]], text_index: np.ndarray,
                    concept_rows: np.ndarray, *, batch_size: int = 16, progress: bool = True,
                    round_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Each pair's (text, concept row) max token attribution over the tokens after the chat prefix, and the
        index of that token in the text's ids (the first of equal maxima). `batch_size` sequences per forward,
        path points included; `round_tokens` rounds the token scores before the max (the reference protocol)."""
        self.check_model(target)
        short = sorted({int(t) for t in text_index if len(token_ids[t]) <= target.prefix_length})
        if short:
            raise InputError(f"texts {short[:10]} have no tokens after the {target.prefix_length}-token chat prefix; "
                             "score chat transcripts (TargetModel.format_transcript), not bare strings.")
        alphas = self.alphas
        baseline = space_baseline(target) if self.config["attribution"] == "ig" else None
        pairs_per_batch = max(1, batch_size // len(alphas))
        order = sorted(range(len(text_index)), key=lambda i: -len(token_ids[text_index[i]]))
        batches = [order[start:start + pairs_per_batch] for start in range(0, len(order), pairs_per_batch)]
        values = np.empty(len(text_index), dtype=np.float32)
        where = np.empty(len(text_index), dtype=np.int64)
        for batch in tqdm(batches, desc=f"{self.method} attributions", unit="batch",
                          disable=not progress or len(batches) < 2):
            rows = [list(token_ids[text_index[i]]) for i in batch]
            input_ids, attention_mask = pad_batch(rows, pad_token_id(target), side="right")
            head = self.weight[torch.as_tensor(concept_rows[batch], dtype=torch.long)]
            scores = path_attribution(target, self.layer, input_ids, attention_mask, head, alphas,
                                      baseline).token_scores.cpu()
            if round_tokens is not None:
                scores = round_tokens(scores)
            positions = torch.arange(input_ids.shape[1])[None, :]
            valid = attention_mask.bool() & (positions >= target.prefix_length)
            scores = scores.masked_fill(~valid, float("-inf"))
            index = scores.argmax(dim=1)
            values[batch], where[batch] = scores.gather(1, index[:, None]).squeeze(1).numpy(), index.numpy()
        return values, where
