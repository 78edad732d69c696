"""The `Method` interface every detection / steering method implements, and the per-concept training sets.

A method turns the `train` split into its result: `Method(config).fit(target, train_df, concepts, layer)`,
a `SteeringDictionary` for the rank-1 methods (the BoW and prompt baselines return their own result types,
`axmethods.results`). Each concept trains on its positives plus the shared negatives (concept_id −1) of its
genre — AxBench's 72 + 72 = 144 examples (spec §1.4). `detection_activation` is what turns `h @ W.T + b`
into a per-token detection score ("identity" or "relu", stored as the dictionary's `activation`).

Adding a method = one subclass with a config dataclass + one entry in `axmethods.registry.METHODS`.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pandas as pd
import torch

from axdata.concepts import Concept
from axdata.errors import InputError
from axdata.schema import EMPTY_CONCEPT, SHARED_NEGATIVE_ID
from axdata.settings import SettingsError, build_settings
from axdata.validation import check_dataclass_numbers
from axmethods.activations import ActivationCollector, TextSums, TokenActivations, resolve_dtype
from axmethods.contract import ConceptResult
from axmethods.dictionary import SteeringDictionary
from axmethods.models import TargetModel

logger = logging.getLogger(__name__)

DetectionActivation = Literal["identity", "relu"]


# A method setting that is unknown, mistyped or out of range: the one settings error.
MethodConfigError = SettingsError


class TrainingDataError(InputError):
    """The train split cannot give a concept its positives and negatives."""


@dataclass
class MethodConfig:
    """Settings shared by every method (TRL style: parsed from YAML / `--set key=value` by HfArgumentParser)."""

    seed: int = field(default=42, metadata={"help": "Seed of every random choice (init, shuffles, sampling)."})
    activation_batch_size: int = field(default=16, metadata={"help": "Texts per activation forward pass "
                                                                     "(AxBench latent_batch_size)."})
    activation_dtype: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on CUDA / CPUs with native bf16, else the model's dtype) | model | "
                          "float32 | bfloat16 | float16. Loading the model in that dtype is faster than autocast."},
    )
    max_length: int | None = field(default=None, metadata={"help": "Truncate each text to this many tokens "
                                                                   "(chat prefix included); None keeps all."})
    concepts_per_chunk: int = field(
        default=64,
        metadata={"help": "Concepts trained jointly at once; bounds memory (their positives' activations, "
                          "or their rows of an LM training batch)."},
    )

    def __post_init__(self) -> None:
        try:
            check_dataclass_numbers(self)
        except ValueError as err:
            raise MethodConfigError(str(err)) from None


@dataclass
class TrainingSet:
    """Every concept's examples as index matrices into one list of unique rows of the train split.

    `members[c, j]` is the row index of concept c's j-th example (−1 pads concepts with fewer), and
    `labels[c, j]` its label (1 positive, 0 negative). `shared[i]` marks rows used by several concepts
    (the shared negatives): their activations are computed once and kept.
    """

    concepts: list[Concept]
    instructions: list[str]
    outputs: list[str]
    shared: torch.Tensor  # [n_rows] bool
    members: torch.Tensor  # [n_concepts, max_examples] long, −1 = padding
    labels: torch.Tensor  # [n_concepts, max_examples] float

    @classmethod
    def from_frame(cls, train_df: pd.DataFrame, concepts: Sequence[Concept], *,
                   positives_only: bool = False) -> TrainingSet:
        """Positives of each concept + the shared negatives of its genre (+ its own negatives, if any)."""
        missing = {"input", "output", "concept_id", "category", "concept_genre"} - set(train_df.columns)
        if missing:
            raise TrainingDataError(f"The train frame lacks columns {sorted(missing)}; pass the `train` split "
                                    "(axdata.builders.read_split(dir, config, 'train')).")
        if not concepts:
            raise TrainingDataError("No concepts to train; pass at least one Concept.")
        for column in ("input", "output"):
            bad = ~train_df[column].map(lambda value: isinstance(value, str))
            if bad.any():
                raise TrainingDataError(
                    f"The train split's {column!r} column has {int(bad.sum())} row(s) that are not text (first: row "
                    f"{int(bad.to_numpy().nonzero()[0][0])}); an empty answer is '', not null — regenerate or fix "
                    "those rows.")
        df = train_df.reset_index(drop=True)
        is_positive = df["category"].eq("positive").to_numpy()
        is_shared = (df["concept_id"].eq(SHARED_NEGATIVE_ID) & df["category"].eq("negative")).to_numpy()
        by_concept = df.groupby("concept_id").indices
        shared_by_genre = df[is_shared].groupby("concept_genre").indices
        shared_rows = df.index[is_shared].to_numpy()

        example_rows: list[list[int]] = []
        example_labels: list[list[float]] = []
        for concept in concepts:
            own = by_concept.get(concept.concept_id, [])
            positives = [int(i) for i in own if is_positive[i]]
            if not positives:
                raise TrainingDataError(
                    f"Concept {concept.concept_id} ({concept.concept!r}) has no positive rows in the train split; "
                    "drop it from the concept list or regenerate its data.")
            negatives: list[int] = []
            if not positives_only:
                genre = concept.genre or df.at[positives[0], "concept_genre"]
                negatives = [int(shared_rows[i]) for i in shared_by_genre.get(genre, [])]
                negatives += [int(i) for i in own if not is_positive[i]]
                if not negatives:
                    raise TrainingDataError(
                        f"Concept {concept.concept_id} ({concept.concept!r}) has no negatives: the train split has "
                        f"no shared negatives (concept_id {SHARED_NEGATIVE_ID}, output_concept {EMPTY_CONCEPT}) "
                        f"of genre {genre!r}; generate them or use a positives-only method.")
            example_rows.append(positives + negatives)
            example_labels.append([1.0] * len(positives) + [0.0] * len(negatives))

        used = sorted({row for rows in example_rows for row in rows})
        position = {row: i for i, row in enumerate(used)}
        width = max(len(rows) for rows in example_rows)
        members = torch.full((len(concepts), width), -1, dtype=torch.long)
        labels = torch.zeros((len(concepts), width))
        for c, (rows, row_labels) in enumerate(zip(example_rows, example_labels)):
            members[c, :len(rows)] = torch.tensor([position[row] for row in rows])
            labels[c, :len(rows)] = torch.tensor(row_labels)
        return cls(
            concepts=list(concepts),
            instructions=df.loc[used, "input"].astype(str).tolist(),
            outputs=df.loc[used, "output"].astype(str).tolist(),
            shared=torch.from_numpy(is_shared[used].copy()),
            members=members,
            labels=labels,
        )

    @property
    def n_concepts(self) -> int:
        return len(self.concepts)

    def chunk(self, start: int, stop: int) -> TrainingSet:
        """Concepts start:stop with only the rows they use, re-indexed."""
        members = self.members[start:stop]
        used = torch.unique(members[members >= 0])
        remap = torch.full((len(self.instructions),), -1, dtype=torch.long)
        remap[used] = torch.arange(len(used))
        local = torch.where(members >= 0, remap[members.clamp(min=0)], members)
        picked = used.tolist()
        return TrainingSet(self.concepts[start:stop], [self.instructions[i] for i in picked],
                           [self.outputs[i] for i in picked], self.shared[used], local, self.labels[start:stop])

    def chunks(self, size: int) -> list[TrainingSet]:
        if size < 1:
            raise MethodConfigError(f"concepts_per_chunk must be at least 1, got {size}")
        return [self.chunk(start, start + size) for start in range(0, self.n_concepts, size)]

    def transcripts(self, target: TargetModel) -> list[str]:
        """AxBench's "binarized" view: user turn + assistant answer, without the end-of-turn suffix."""
        return [target.format_transcript(i, o) for i, o in zip(self.instructions, self.outputs)]

    def membership(self, value: float) -> torch.Tensor:
        """[n_concepts, n_rows] float mask of the rows each concept uses with label `value`."""
        mask = torch.zeros(self.n_concepts, len(self.instructions))
        chosen = (self.members >= 0) & (self.labels == value)
        rows = torch.arange(self.n_concepts)[:, None].expand_as(self.members)
        mask[rows[chosen], self.members[chosen]] = 1.0
        return mask


class Method(ABC):
    """A detection / steering method: `fit` turns the train split into a `SteeringDictionary`."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    detection_activation: ClassVar[DetectionActivation] = "identity"
    paper: ClassVar[str] = "AxBench (Wu, Arora et al., ICML 2025, arXiv 2501.17148)"

    def __init__(self, config: MethodConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = self.config_class()
        elif isinstance(config, Mapping):
            config = build_settings(self.config_class, config)
        elif not isinstance(config, self.config_class):
            raise MethodConfigError(f"{self.name} takes a {self.config_class.__name__}, got "
                                    f"{type(config).__name__}; build one or pass a dict of its fields.")
        self.config = config

    @abstractmethod
    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> ConceptResult:
        """Train on `train_df` (the `train` split) for `concepts`; one result row per concept."""

    def score(self, dictionary: SteeringDictionary, hidden: torch.Tensor) -> torch.Tensor:
        """Per-token detection scores [tokens, n_concepts] of residuals `hidden` [tokens, d]."""
        pre = hidden.float() @ dictionary.weight.to(hidden.device).T
        if dictionary.bias is not None:
            pre = pre + dictionary.bias.to(hidden.device)
        return dictionary.activate(pre)

    def collector(self, target: TargetModel, layer: int) -> ActivationCollector:
        cfg = self.config
        return ActivationCollector(target, layer, batch_size=cfg.activation_batch_size,
                                   dtype=resolve_dtype(cfg.activation_dtype, target), max_length=cfg.max_length)

    def dictionary(self, target: TargetModel, concepts: Sequence[Concept], layer: int, weight: torch.Tensor,
                   *, bias: torch.Tensor | None = None, steering_weight: torch.Tensor | None = None,
                   extra_config: Mapping[str, Any] | None = None) -> SteeringDictionary:
        return SteeringDictionary(
            weight=weight, concepts=list(concepts), layer=layer, hook_module=target.residual_module_path(layer),
            base_model=target.model_id, method=self.name, base_model_revision=target.revision, bias=bias,
            config={**dataclasses.asdict(self.config), **(extra_config or {})}, steering_weight=steering_weight,
            activation=self.detection_activation)


class ActivationMethod(Method):
    """A method that needs only frozen layer-L activations of the binarized transcripts.

    `fit` collects activations one chunk of concepts at a time (the shared negatives once for all
    chunks) and hands each chunk to `fit_chunk`, which works on all its concepts with tensor ops.
    A method that needs only per-text token sums (`needs_tokens = False`, DiffMean) gets `TextSums`
    instead of `TokenActivations`: the chunk's token activations are then never held at once.
    """

    needs_tokens: ClassVar[bool] = True

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int, *, collector: ActivationCollector | None = None) -> SteeringDictionary:
        """As `Method.fit`; pass a `collector` to share cached activations between methods of one run."""
        data = TrainingSet.from_frame(train_df, concepts)
        collector = collector or self.collector(target, layer)
        if collector.layer != layer:
            raise ValueError(f"The collector reads layer {collector.layer} but {self.name} fits layer {layer}; "
                             "pass a collector of the same layer.")
        generator = torch.Generator().manual_seed(self.config.seed)
        rows = []
        for chunk in data.chunks(self.config.concepts_per_chunk):
            collect = collector.collect if self.needs_tokens else collector.collect_sums
            activations = collect(chunk.transcripts(target), keep=chunk.shared.tolist())
            rows.append(self.fit_chunk(activations, chunk, generator))
        logger.info("%s: fitted %d concepts at layer %d (%d texts through the model)", self.name, len(concepts),
                    layer, collector.forward_texts)
        return self.dictionary(target, concepts, layer, torch.cat(rows))

    @abstractmethod
    def fit_chunk(self, activations: TokenActivations | TextSums, data: TrainingSet, generator: torch.Generator
                  ) -> torch.Tensor:
        """[n_concepts of `data`, d] directions from `activations` of `data`'s rows (in row order)."""


def normalise_rows(weight: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (a zero row stays zero instead of becoming NaN)."""
    return weight / weight.norm(dim=-1, keepdim=True).clamp(min=1e-12)
