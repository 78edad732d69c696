"""SAE and SAE-A (AxBench `sae.py: GemmaScopeSAE` / `GemmaScopeSAEMaxAUC`, spec §3.7–3.8).

No training: the concept's feature of a GemmaScope-format JumpReLU SAE (W_enc [d, z], W_dec [z, d],
b_enc [z], b_dec [d], threshold [z]) read from a local `.npz` or `.safetensors` file (never
downloaded). Detection reads with the encoder, steering writes with the decoder row
(`steering_weight`).

The detection read-out is JumpReLU, `1[pre > θ]·pre` with pre = h·W_enc + b_enc. The dictionary stores
it as ReLU(h·W_enc + (b_enc − θ)): zero exactly where JumpReLU is zero and a strictly increasing function
of it elsewhere, so max-pooled scores rank texts identically (same AUROC); the thresholds are kept in
`config["jumprelu_threshold"]` for readers that want JumpReLU's own values.

Steering magnitude (AxBench §3.7): factor × the feature's max activation in JumpReLU units — Neuronpedia's
`maxValue` from a local `max_activations` file (AxBench's default), or else the max over the concept's
latent rows, which `latent.calibrate` converts back to JumpReLU units (max score + θ).

- SAE: the feature is the concept's `ref` (a Neuronpedia URL ending in the feature index) or
  `sae_feature` in `config.features` ({concept_id: index}).
- SAE-A: per concept, the feature whose max-pooled activation over the concept's 144 training texts has
  the highest AUROC against their labels; all features of all concepts of a chunk in one pass.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from axdata.concepts import Concept
from axmethods.activations import TokenActivations
from axmethods.dictionary import SteeringDictionary
from axmethods.methods.base import Method, MethodConfig, MethodConfigError, TrainingSet
from axmethods.models import TargetModel

logger = logging.getLogger(__name__)

SAE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_TRAILING_INDEX = re.compile(r"/(\d+)/?$")


@dataclass
class JumpReLUSAE:
    W_enc: torch.Tensor  # [d, z]
    W_dec: torch.Tensor  # [z, d]
    b_enc: torch.Tensor  # [z]
    b_dec: torch.Tensor  # [d]
    threshold: torch.Tensor  # [z]

    @classmethod
    def load(cls, path: str | Path) -> JumpReLUSAE:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SAE params file {path} does not exist; pass a local GemmaScope params.npz "
                                    "or .safetensors (sae_path=...). Nothing is downloaded.")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                tensors = {key: torch.from_numpy(npz[key]) for key in npz.files}
        elif path.suffix == ".safetensors":
            tensors = load_file(str(path))
        else:
            raise MethodConfigError(f"SAE params file {path} is neither .npz nor .safetensors; convert it.")
        missing = [key for key in SAE_KEYS if key not in tensors]
        if missing:
            raise MethodConfigError(f"SAE params file {path} lacks {missing}; GemmaScope files hold {list(SAE_KEYS)}.")
        sae = cls(**{key: tensors[key].float() for key in SAE_KEYS})
        d, z = sae.W_enc.shape
        if sae.W_dec.shape != (z, d) or sae.b_enc.shape != (z,) or sae.threshold.shape != (z,) or sae.b_dec.shape != (d,):
            raise MethodConfigError(f"SAE params file {path} has inconsistent shapes (W_enc {tuple(sae.W_enc.shape)}, "
                                    f"W_dec {tuple(sae.W_dec.shape)}); expected W_enc [d, z], W_dec [z, d].")
        return sae

    @property
    def hidden_size(self) -> int:
        return self.W_enc.shape[0]

    def encode(self, hidden: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """JumpReLU activations [tokens, z] (or only `features`) of residuals [tokens, d]."""
        w, b, theta = self.W_enc, self.b_enc, self.threshold
        if features is not None:
            w, b, theta = w[:, features], b[features], theta[features]
        pre = hidden.float() @ w.to(hidden.device) + b.to(hidden.device)
        return pre * (pre > theta.to(hidden.device))


@dataclass
class SAEConfig(MethodConfig):
    sae_path: str = field(default="", metadata={"help": "Local GemmaScope-format params file (.npz or "
                                                        ".safetensors) with W_enc, W_dec, b_enc, b_dec, threshold."})
    features: str = field(default="", metadata={"help": "JSON {concept_id: feature index} overriding each "
                                                        "concept's Neuronpedia ref (SAE only)."})
    max_activations: str = field(
        default="", metadata={"help": "Local JSON file {feature index: max activation} (Neuronpedia's maxValue per "
                                      "feature, the table AxBench caches as <model>_<sae>_max_activations.json): the "
                                      "steering magnitude is factor × that value, as in AxBench. Without it, the max "
                                      "JumpReLU activation over the concept's latent rows (AxBench's "
                                      "disable_neuronpedia_max_act)."})


@dataclass
class SAEAConfig(SAEConfig):
    feature_batch: int = field(default=4096, metadata={"help": "SAE features scored at once when picking by AUROC."})


class SAE(Method):
    name = "sae"
    config_class = SAEConfig
    detection_activation = "relu"

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> SteeringDictionary:
        sae = self._load(target)
        features = self.pick_features(sae, target, train_df, concepts, layer)
        maxima = self._max_activations(features)
        dictionary = self.dictionary(
            target, concepts, layer, sae.W_enc[:, features].T, bias=sae.b_enc[features] - sae.threshold[features],
            steering_weight=sae.W_dec[features],
            extra_config={"sae_features": features.tolist(), "jumprelu_threshold": sae.threshold[features].tolist(),
                          **({"calibration": "fixed"} if maxima is not None else {})},
        )
        if maxima is None:
            return dictionary
        return dictionary.with_calibration(maxima, {"source": "max_activations", "path": self.config.max_activations,
                                                    "statistic": "Neuronpedia max activation of the feature"})

    def _max_activations(self, features: torch.Tensor) -> torch.Tensor | None:
        """Each picked feature's max activation from `max_activations` (None without that file)."""
        if not self.config.max_activations:
            return None
        path = Path(self.config.max_activations)
        try:
            table = {int(k): float(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        except FileNotFoundError:
            raise MethodConfigError(f"max_activations file {path} does not exist.") from None
        except (ValueError, TypeError, AttributeError) as err:
            raise MethodConfigError(f"max_activations file {path} must be a JSON object {{feature index: max "
                                    f"activation}}: {err}") from None
        missing = [int(f) for f in features.tolist() if int(f) not in table]
        if missing:
            raise MethodConfigError(f"max_activations file {path} has no value for SAE feature(s) {missing[:10]}; "
                                    "add them or drop max_activations to calibrate on the latent rows.")
        return torch.tensor([table[int(f)] for f in features.tolist()], dtype=torch.float32)

    def pick_features(self, sae: JumpReLUSAE, target: TargetModel, train_df: pd.DataFrame,
                      concepts: Sequence[Concept], layer: int) -> torch.Tensor:
        overrides = {int(k): int(v) for k, v in json.loads(self.config.features or "{}").items()}
        picked = []
        for concept in concepts:
            if concept.concept_id in overrides:
                picked.append(overrides[concept.concept_id])
                continue
            match = _TRAILING_INDEX.search(concept.ref or "")
            if match is None:
                raise MethodConfigError(
                    f"Concept {concept.concept_id} ({concept.concept!r}) has ref {concept.ref!r}, which names no SAE "
                    "feature (expected a Neuronpedia URL ending in /<index>); pass features='{\"id\": index}' or "
                    "use sae-a, which picks features by AUROC.")
            picked.append(int(match.group(1)))
        features = torch.tensor(picked, dtype=torch.long)
        too_big = features >= sae.W_enc.shape[1]
        if too_big.any():
            raise MethodConfigError(f"SAE feature indices {features[too_big].tolist()} exceed the SAE's "
                                    f"{sae.W_enc.shape[1]} features; check sae_path and the concept refs.")
        return features

    def _load(self, target: TargetModel) -> JumpReLUSAE:
        if not self.config.sae_path:
            raise MethodConfigError(f"{self.name} needs sae_path=<local params.npz or .safetensors>.")
        sae = JumpReLUSAE.load(self.config.sae_path)
        if sae.hidden_size != target.hidden_size:
            raise MethodConfigError(f"SAE {self.config.sae_path} reads width {sae.hidden_size} but {target.spec!r} "
                                    f"has hidden size {target.hidden_size}; use an SAE trained on this model.")
        return sae


class SAEA(SAE):
    """SAE-A: each concept's feature is the one with the best training-set AUROC."""

    name = "sae-a"
    config_class = SAEAConfig

    def pick_features(self, sae: JumpReLUSAE, target: TargetModel, train_df: pd.DataFrame,
                      concepts: Sequence[Concept], layer: int) -> torch.Tensor:
        data = TrainingSet.from_frame(train_df, concepts)
        collector = self.collector(target, layer)
        picked = []
        for chunk in data.chunks(self.config.concepts_per_chunk):
            activations = collector.collect(chunk.transcripts(target), keep=chunk.shared.tolist())
            pooled = max_pooled_features(sae, activations, self.config.feature_batch)  # [texts, z]
            step = self.config.feature_batch
            auroc = torch.cat([feature_aurocs(pooled[:, start:start + step], chunk.members, chunk.labels)
                               for start in range(0, pooled.shape[1], step)], dim=1)
            picked.append(auroc.argmax(1))
        return torch.cat(picked)


def max_pooled_features(sae: JumpReLUSAE, activations: TokenActivations, feature_batch: int) -> torch.Tensor:
    """[texts, z] max over each text's tokens of every SAE feature's JumpReLU activation."""
    z = sae.W_enc.shape[1]
    return torch.cat([
        activations.max_pool(sae.encode(activations.values, torch.arange(start, min(start + feature_batch, z))))
        for start in range(0, z, feature_batch)
    ], dim=1)


def feature_aurocs(pooled: torch.Tensor, members: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[concepts, features] AUROC of each feature's `pooled` [texts, features] scores over each concept's examples.

    AUROC via mean ranks (Mann–Whitney U, ties averaged), for all concepts × features at once.
    """
    valid = members >= 0
    scores = pooled[members.clamp(min=0)]  # [k, m, z]
    scores = scores.masked_fill(~valid[..., None], float("-inf"))
    ranks = _average_ranks(scores)  # padding ranks lowest; subtract it below
    n_pad = (~valid).sum(1).float()
    positive = (labels == 1) & valid
    n_pos = positive.sum(1).float()
    n_neg = (valid & (labels == 0)).sum(1).float()
    rank_sum = (ranks * positive[..., None]).sum(1) - (n_pad * n_pos)[:, None]
    auroc = (rank_sum - (n_pos * (n_pos + 1) / 2)[:, None]) / (n_pos * n_neg).clamp(min=1)[:, None]
    return auroc


def _average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 1 with ties given their average rank."""
    sorted_scores, order = scores.sort(dim=1)
    m = scores.shape[1]
    position = torch.arange(1, m + 1, dtype=torch.float32).view(1, m, 1).expand_as(sorted_scores)
    # Runs of equal values: each position gets the mean of its run's first and last positions.
    new_run = torch.ones_like(sorted_scores, dtype=torch.bool)
    new_run[:, 1:] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    run_id = new_run.long().cumsum(1) - 1
    first = torch.zeros_like(position).scatter_reduce(1, run_id, position, reduce="amin", include_self=False)
    last = torch.zeros_like(position).scatter_reduce(1, run_id, position, reduce="amax", include_self=False)
    averaged = ((first + last) / 2).gather(1, run_id)
    return torch.empty_like(averaged).scatter(1, order, averaged)
