"""Bag-of-Words "BoW" (AxBench `bow.py`, spec §3.9): a detection-only text classifier, no residual stream.

scikit-learn `CountVectorizer` over the binarized chat transcripts + `LogisticRegression` (L2, C=100,
lbfgs, 1,000 iterations) per concept; the score of a text is P(positive).

How it fits the dictionary contract: the vocabulary is fitted once over every training text (stored in
`config["vocabulary"]`), so each concept's classifier is one row of `weight` [n, vocabulary size] with its
intercept in `bias`, and `score = sigmoid(counts @ weight.T + bias)`. This equals AxBench's per-concept
vectorizers: words absent from a concept's texts are all-zero columns whose L2-penalised coefficients
stay exactly 0. The dictionary says `config["detector"] == "text"` (and `steering == "none"`): its
`weight` is not a residual direction, so residual-stream inference must call `BoW.score_texts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from axdata.concepts import Concept
from axmethods.dictionary import DictionaryError, SteeringDictionary
from axmethods.methods.base import Method, MethodConfig, TrainingSet
from axmethods.models import TargetModel


@dataclass
class BoWConfig(MethodConfig):
    C: float = field(default=100.0, metadata={"help": "Inverse L2 strength of LogisticRegression (paper: 100)."})
    max_iter: int = field(default=1000, metadata={"help": "lbfgs iterations (paper: 1000)."})


class BoW(Method):
    name = "bow"
    config_class = BoWConfig
    detection_activation = "external"
    steering = "none"
    unit_norm = False

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> SteeringDictionary:
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
        vocabulary = vectorizer.get_feature_names_out().tolist()
        return self.dictionary(target, concepts, layer, torch.from_numpy(weight), bias=torch.from_numpy(bias),
                               extra_config={"detector": "text", "vocabulary": vocabulary})

    @staticmethod
    def score_texts(dictionary: SteeringDictionary, texts: Sequence[str]) -> torch.Tensor:
        """P(positive) [texts, n_concepts] of chat transcripts `texts` under each concept's classifier."""
        vocabulary = dictionary.config.get("vocabulary")
        if dictionary.config.get("detector") != "text" or vocabulary is None:
            raise DictionaryError(f"The {dictionary.method} dictionary is not a bag-of-words detector "
                                  "(config has no vocabulary); score it on residual activations instead.")
        counts = CountVectorizer(vocabulary=vocabulary).transform(list(texts))
        logits = torch.from_numpy((counts @ dictionary.weight.numpy().T).astype(np.float32))
        return torch.sigmoid(logits + (dictionary.bias if dictionary.bias is not None else 0.0))
