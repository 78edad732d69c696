"""Bag-of-Words "BoW" (AxBench `bow.py`, spec §3.9): a detection-only text classifier, no residual stream.

scikit-learn `CountVectorizer` over the binarized chat transcripts + `LogisticRegression` (L2, C=100,
lbfgs, 1,000 iterations) per concept; the score of a text is P(positive).

The result is a `BagOfWords`: the vocabulary is fitted once over every training text, so each concept's
classifier is one row of `weight` [n, vocabulary size] with its intercept in `bias`, and
`score = sigmoid(counts @ weight.T + bias)`. This equals AxBench's per-concept vectorizers: words absent from
a concept's texts are all-zero columns whose L2-penalised coefficients stay exactly 0. It detects on the
texts (`detector = "text"`) and does not steer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from axdata.concepts import Concept
from axmethods.contract import DictionaryError, FolderResult
from axmethods.methods.base import Method, MethodConfig, TrainingSet
from axmethods.models import TargetModel


@dataclass
class BoWConfig(MethodConfig):
    C: float = field(default=100.0, metadata={"help": "Inverse L2 strength of LogisticRegression (paper: 100)."})
    max_iter: int = field(default=1000, metadata={"help": "lbfgs iterations (paper: 1000)."})


@dataclass
class BagOfWords(FolderResult):
    """Per-concept logistic regressions over word counts of the chat transcripts (the BoW baseline's result)."""

    FORMAT: ClassVar[str] = "axbench-bag-of-words"
    KIND: ClassVar[str] = "text classifier"
    detector: ClassVar[str] = "text"

    weight: torch.Tensor  # [n_concepts, vocabulary size]
    bias: torch.Tensor  # [n_concepts]
    vocabulary: list[str]
    concepts: list[Concept]
    method: str
    base_model: str
    layer: int
    base_model_revision: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = (len(self.concepts), len(self.vocabulary))
        if tuple(self.weight.shape) != expected or tuple(self.bias.shape) != expected[:1]:
            raise DictionaryError(f"the {self.method} classifier's weight {tuple(self.weight.shape)} and bias "
                                  f"{tuple(self.bias.shape)} do not fit {expected[0]} concepts × {expected[1]} words.")

    def score_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """P(positive) [texts, n_concepts] of chat transcripts `texts` under each concept's classifier."""
        counts = CountVectorizer(vocabulary=self.vocabulary).transform(list(texts))
        logits = torch.from_numpy((counts @ self.weight.numpy().T).astype(np.float32))
        return torch.sigmoid(logits + self.bias)

    def record(self) -> dict[str, Any]:
        return {"layer": self.layer, "vocabulary": self.vocabulary}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias}

    @classmethod
    def from_record(cls, record: dict[str, Any], concepts: list[Concept],
                    tensors: dict[str, torch.Tensor]) -> BagOfWords:
        return cls(weight=tensors["weight"], bias=tensors["bias"], vocabulary=record["vocabulary"], concepts=concepts,
                   method=record["method"], base_model=record["base_model"], layer=record["layer"],
                   base_model_revision=record.get("base_model_revision"), config=record.get("config", {}))


class BoW(Method):
    name = "bow"
    config_class = BoWConfig

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> BagOfWords:
        data = TrainingSet.from_frame(train_df, concepts)
        texts = data.transcripts(target)
        vectorizer = CountVectorizer()
        counts = vectorizer.fit_transform(texts)
        weight = np.zeros((data.n_concepts, len(vectorizer.vocabulary_)), dtype=np.float32)
        bias = np.zeros(data.n_concepts, dtype=np.float32)
        # One small independent fit per concept: sklearn has no batched logistic regression.
        for c in range(data.n_concepts):
            rows = data.members[c][data.members[c] >= 0].numpy()
            model = LogisticRegression(C=self.config.C, max_iter=self.config.max_iter, random_state=self.config.seed)
            model.fit(counts[rows], data.labels[c, :len(rows)].numpy())
            weight[c], bias[c] = model.coef_[0], model.intercept_[0]
        return BagOfWords(weight=torch.from_numpy(weight), bias=torch.from_numpy(bias),
                          vocabulary=vectorizer.get_feature_names_out().tolist(), concepts=list(concepts),
                          method=self.name, base_model=target.model_id, layer=layer,
                          base_model_revision=target.revision, config=asdict(self.config))
