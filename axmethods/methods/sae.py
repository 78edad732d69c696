"""SAE and SAE-A (AxBench `sae.py: GemmaScopeSAE` / `GemmaScopeSAEMaxAUC`, spec §3.7–3.8).

No training: the concept's feature of a JumpReLU SAE (W_enc [d, z], W_dec [z, d], b_enc [z], b_dec [d],
threshold [z]) read from local files (never downloaded): a GemmaScope params `.npz` / `.safetensors` file, or
a SAELens folder (`cfg.json` + `sae_weights.safetensors`, architecture `jumprelu` or `standard` = ReLU, i.e.
threshold 0) — the layout most released SAEs use. Detection reads with the encoder, steering writes with the
decoder row (`steering_weight`).

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
- SAE-filtered (Arad et al. 2025): SAE's features, each given its output score (`axmethods.output_score`);
  concepts whose feature scores below the paper's threshold (0.01) are kept for detection but not steered
  (the dictionary's `unsteered_concept_ids`; the report counts them and compares SAE on kept vs dropped).
"""

from __future__ import annotations

import dataclasses
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
from axmethods.contract import nonfinite_tensors
from axmethods.dictionary import SteeringDictionary
from axmethods.methods.base import Method, MethodConfig, MethodConfigError, TrainingSet
from axmethods.models import TargetModel
from axmethods.output_score import (
    AMPLIFICATION,
    THRESHOLD,
    OutputScoreSettings,
    output_scores,
    sae_amplification,
    threshold_mask,
)

logger = logging.getLogger(__name__)

SAE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_TRAILING_INDEX = re.compile(r"/(\d+)/?$")
SAELENS_CONFIG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SAELENS_ARCHITECTURES = ("jumprelu", "standard")
_RESID_POST = re.compile(r"blocks\.(\d+)\.hook_resid_post")


@dataclass
class JumpReLUSAE:
    W_enc: torch.Tensor  # [d, z]
    W_dec: torch.Tensor  # [z, d]
    b_enc: torch.Tensor  # [z]
    b_dec: torch.Tensor  # [d]
    threshold: torch.Tensor  # [z]
    model_name: str | None = None  # SAELens cfg.json's model_name (None for GemmaScope files)

    @classmethod
    def load(cls, path: str | Path, *, layer: int | None = None) -> JumpReLUSAE:
        """A GemmaScope params file, or a SAELens folder (checked against `layer` when given)."""
        path = Path(path)
        if path.is_dir():
            return cls.load_saelens(path, layer=layer)
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
        return cls(**{key: tensors[key].float() for key in SAE_KEYS})._checked(path)

    @classmethod
    def load_saelens(cls, folder: Path, *, layer: int | None = None) -> JumpReLUSAE:
        """A SAELens folder: `cfg.json` (architecture, d_in, hook_name) + `sae_weights.safetensors`."""
        def bad(problem: str, fix: str) -> MethodConfigError:
            return MethodConfigError(f"SAE folder {folder}: {problem}; {fix}")

        if not (folder / SAELENS_CONFIG).is_file() or not (folder / SAELENS_WEIGHTS).is_file():
            raise bad(f"no {SAELENS_CONFIG} + {SAELENS_WEIGHTS}", "pass a SAELens SAE folder or a GemmaScope "
                      "params .npz / .safetensors file")
        try:
            cfg = json.loads((folder / SAELENS_CONFIG).read_text(encoding="utf-8"))
            tensors = load_file(str(folder / SAELENS_WEIGHTS))
        except (ValueError, OSError) as error:
            raise bad(f"unreadable {SAELENS_CONFIG} or {SAELENS_WEIGHTS} ({error})", "re-download it") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("metadata", {}), dict):
            raise bad(f"{SAELENS_CONFIG} is not a JSON object (with an object under 'metadata')", "re-download it")
        cfg = {**cfg.get("metadata", {}), **cfg}  # SAELens 6 keeps hook_name / model_name under metadata
        architecture = cfg.get("architecture", "standard")
        if architecture not in SAELENS_ARCHITECTURES:
            raise bad(f"architecture {architecture!r} is not supported", f"supported: {', '.join(SAELENS_ARCHITECTURES)}")
        if cfg.get("normalize_activations") not in (None, "none"):
            raise bad(f"normalize_activations={cfg['normalize_activations']!r} is not supported",
                      "use an SAE trained on raw residuals (normalize_activations 'none')")
        if architecture == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
            tensors["threshold"] = tensors.pop("log_threshold").exp()
        if architecture == "standard":
            tensors.setdefault("threshold", torch.zeros_like(tensors.get("b_enc", torch.zeros(0))))
        missing = [key for key in SAE_KEYS if key not in tensors]
        if missing:
            raise bad(f"{SAELENS_WEIGHTS} lacks {missing}", f"a SAELens {architecture} SAE holds {list(SAE_KEYS)} "
                      "(or log_threshold)")
        sae = cls(**{key: tensors[key].float() for key in SAE_KEYS})._checked(folder)
        if cfg.get("d_in") not in (None, sae.hidden_size):
            raise bad(f"cfg.json says d_in {cfg['d_in']} but the weights read width {sae.hidden_size}", "re-download it")
        hook = str(cfg.get("hook_name", ""))
        match = _RESID_POST.fullmatch(hook)
        if match is None:
            raise bad(f"hook_name {hook!r} is not a residual-stream output (blocks.<L>.hook_resid_post)",
                      "use a residual-stream SAE")
        if layer is not None and int(match.group(1)) != layer:
            raise bad(f"it was trained on layer {match.group(1)} ({hook}) but the run uses layer {layer}",
                      f"set layer {match.group(1)} or use the SAE of layer {layer}")
        if cfg.get("apply_b_dec_to_input"):  # encode(x - b_dec) = x·W_enc + (b_enc - b_dec·W_enc)
            sae.b_enc = sae.b_enc - sae.b_dec @ sae.W_enc
        sae.model_name = cfg.get("model_name")
        return sae

    def _checked(self, path: Path) -> JumpReLUSAE:
        d, z = self.W_enc.shape
        if (self.W_dec.shape != (z, d) or self.b_enc.shape != (z,) or self.threshold.shape != (z,)
                or self.b_dec.shape != (d,)):
            raise MethodConfigError(f"SAE params file {path} has inconsistent shapes (W_enc {tuple(self.W_enc.shape)}, "
                                    f"W_dec {tuple(self.W_dec.shape)}); expected W_enc [d, z], W_dec [z, d].")
        nonfinite = nonfinite_tensors({key: getattr(self, key) for key in SAE_KEYS})
        if nonfinite:  # refused at load, naming the file: later it would look like a method that diverged
            weights = path / SAELENS_WEIGHTS if path.is_dir() else path
            raise MethodConfigError(f"SAE params file {weights}: tensor {', '.join(nonfinite)} holds NaN or infinite "
                                    "values; the file is damaged: re-download it (or convert it again).")
        return self

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
                                                        ".safetensors) with W_enc, W_dec, b_enc, b_dec, threshold, "
                                                        "or a SAELens folder (cfg.json + sae_weights.safetensors; "
                                                        "jumprelu or standard)."})
    features: str = field(default="", metadata={"help": "JSON {concept_id: feature index} overriding each "
                                                        "concept's Neuronpedia ref (SAE only)."})
    max_activations: str = field(
        default="", metadata={"help": "Local JSON file {feature index: max activation} (Neuronpedia's maxValue per "
                                      "feature, the table AxBench caches as <model>_<sae>_max_activations.json): the "
                                      "steering magnitude is factor × that value, as in AxBench. Without it, the max "
                                      "JumpReLU activation over the concept's latent rows (AxBench's "
                                      "disable_neuronpedia_max_act)."})


@dataclass
class SAEFilteredConfig(SAEConfig):
    output_score_threshold: float = field(default=THRESHOLD, metadata={
        "help": "Concepts whose feature's output score (Arad et al. 2025) is below this are not steered (paper: "
                "0.01)."})
    amplification: float = field(default=AMPLIFICATION, metadata={
        "help": "Output score: the feature is added at amplification × the largest SAE activation at the neutral "
                "prompt's last token (paper: 10)."})
    output_score_batch: int = field(default=64, metadata={"help": "Features scored per forward pass."})


@dataclass
class SAEAConfig(SAEConfig):
    feature_batch: int = field(default=4096, metadata={"help": "SAE features scored at once when picking by AUROC."})


class SAE(Method):
    name = "sae"
    config_class = SAEConfig
    detection_activation = "relu"

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> SteeringDictionary:
        sae = self._load(target, layer)
        features = self.pick_features(sae, target, train_df, concepts, layer)
        maxima = self._max_activations(features)
        dictionary = self.dictionary(
            target, concepts, layer, sae.W_enc[:, features].T, bias=sae.b_enc[features] - sae.threshold[features],
            steering_weight=sae.W_dec[features],
            extra_config={"sae_features": features.tolist(), "jumprelu_threshold": sae.threshold[features].tolist(),
                          **({"calibration": "fixed"} if maxima is not None else {})},
        )
        if maxima is not None:
            dictionary = dictionary.with_calibration(maxima, {
                "source": "max_activations", "path": self.config.max_activations,
                "statistic": "Neuronpedia max activation of the feature"})
        return self.finish(dictionary, sae, target, features, layer)

    def finish(self, dictionary: SteeringDictionary, sae: JumpReLUSAE, target: TargetModel, features: torch.Tensor,
               layer: int) -> SteeringDictionary:
        """Hook for subclasses (sae-filtered scores and filters the features)."""
        return dictionary

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

    def _load(self, target: TargetModel, layer: int) -> JumpReLUSAE:
        if not self.config.sae_path:
            raise MethodConfigError(f"{self.name} needs sae_path=<local params.npz or .safetensors, or a SAELens "
                                    "folder>.")
        sae = JumpReLUSAE.load(self.config.sae_path, layer=layer)
        if sae.model_name and sae.model_name.split("/")[-1].removesuffix("-it") not in target.model_id:
            logger.warning("SAE %s was trained on %r and is used with %r (same width)", self.config.sae_path,
                           sae.model_name, target.model_id)
        if sae.hidden_size != target.hidden_size:
            raise MethodConfigError(f"SAE {self.config.sae_path} reads width {sae.hidden_size} but {target.spec!r} "
                                    f"has hidden size {target.hidden_size}; use an SAE trained on this model.")
        return sae


class SAEFiltered(SAE):
    """SAE whose concepts are steered only when their feature is an output feature (output score ≥ threshold).

    Every concept keeps its row (detection is SAE's); the rows carry their output scores, and the dropped concepts
    are the dictionary's `unsteered_concept_ids`: steering skips them (`inference.steering.plan_rows`) and the
    report counts them.
    """

    name = "sae-filtered"
    config_class = SAEFilteredConfig

    def finish(self, dictionary: SteeringDictionary, sae: JumpReLUSAE, target: TargetModel, features: torch.Tensor,
               layer: int) -> SteeringDictionary:
        settings = OutputScoreSettings(amplification=self.config.amplification,
                                       batch_size=self.config.output_score_batch)
        scale = sae_amplification(target, layer, sae.encode, settings)
        scores = output_scores(target, layer, sae.W_dec[features], scale, settings)
        keep = threshold_mask(scores, self.config.output_score_threshold)
        dropped = [c for c, kept in zip(dictionary.concept_ids, keep.tolist()) if not kept]
        logger.info("%s: %d of %d concepts have an output feature (score ≥ %g)", self.name, int(keep.sum()),
                    len(keep), self.config.output_score_threshold)
        info = settings.info(scale=f"amplification × max SAE activation at the last token = {scale:.6g}",
                             threshold=self.config.output_score_threshold, kept=int(keep.sum()), of=len(keep))
        return dataclasses.replace(dictionary, unsteered_concept_ids=tuple(dropped)).with_output_scores(scores, info)


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
