"""AxBench concept detection: mean per-concept AUROC, hard negatives at the Youden threshold, imbalance F1."""

import datasets
import evaluate
import pandas as pd

from axeval.detection import concept_detection, imbalance_detection, summarize_detection, summarize_imbalance

_CITATION = """\
@inproceedings{wu2025axbench,
  title     = {{AxBench}: Steering {LLMs}? Even Simple Baselines Outperform Sparse Autoencoders},
  author    = {Wu, Zhengxuan and Arora, Aryaman and Geiger, Atticus and Wang, Zheng and Huang, Jing and
               Jurafsky, Dan and Manning, Christopher D. and Potts, Christopher},
  booktitle = {Proceedings of the 42nd International Conference on Machine Learning (ICML)},
  year      = {2025},
  url       = {https://arxiv.org/abs/2501.17148}
}
"""

_DESCRIPTION = """\
Concept detection as in AxBench: each concept has a detector (a direction, probe or SAE feature) that gives
every text one score (the latent, max-pooled over tokens). Per concept, the AUROC of its positives against
its negatives; the metric is the mean over concepts with a seeded 95% bootstrap interval over concepts.
Hard negatives (texts that use a word of the concept in another sense) are not part of the AUROC; they are
scored separately as the share falling below the concept's Youden-J threshold, and counted as negatives in
the F1 (AxBench's LatentStatsEvaluator). With `imbalance=True`, the rows with concept id -1 are shared
negatives (about 1:100) added to every concept's own rows, and the metric adds precision, recall and F1 there.
Each number equals AxBench's reference evaluators on the same input.
"""

_KWARGS_DESCRIPTION = """
Args:
    scores (`list` of `float`): the detector score of each text for its concept. None or NaN: no score (a
        rater that gave no rating), excluded and counted in n_unscored; +inf / -inf rank above / below every
        finite score (every number here depends only on the order of the scores).
    categories (`list` of `str`): "positive", "negative" or "hard negative" for each text.
    concept_ids (`list` of `int`): the concept of each text; -1 for shared negatives (imbalance split).
    imbalance (`bool`, default False): also score positives against the shared negatives (concept id -1).
    n_resamples (`int`, default 1000): bootstrap resamples of the concepts.
    confidence (`float`, default 0.95): level of the bootstrap interval.
    seed (`int`, default 0): seed of the bootstrap.
Returns:
    auroc (`float`): mean AUROC over concepts whose AUROC is defined; auroc_ci_low, auroc_ci_high.
    n_concepts (`int`), n_undefined (`int`): concepts seen, concepts lacking scored positives or negatives.
    n_unscored (`int`): texts without a score, left out.
    hard_negative_accuracy (`float`): mean over concepts with hard negatives of the share below the
        Youden threshold (NaN when there are none); hard_negative_accuracy_ci_low / _ci_high,
        n_hard_negative_concepts, n_hard_negatives.
    macro_accuracy (`float`): mean of positive and hard-negative accuracy (AxBench's HardNegativeEvaluator).
    f1 (`float`): mean F1 over all of a concept's rows (hard negatives as negatives) at its F1-optimal threshold
        on positives vs negatives.
    per_concept_auroc (`dict`): concept id -> AUROC.
    imbalance_precision, imbalance_recall, imbalance_f1 (+ _ci_low / _ci_high): only with imbalance=True.
Examples:
    >>> import evaluate
    >>> detection = evaluate.load("axbench/concept_detection")  # doctest: +SKIP
    >>> detection = ConceptDetection()  # the same module, without the Hub
    >>> results = detection.compute(
    ...     scores=[0.9, 0.7, 0.2, 0.1, 0.8, 0.6, 0.5, 0.65, 0.3],
    ...     categories=["positive", "positive", "negative", "negative",
    ...                 "positive", "positive", "negative", "negative", "hard negative"],
    ...     concept_ids=[0, 0, 0, 0, 1, 1, 1, 1, 1])
    >>> results["auroc"], results["per_concept_auroc"]
    (0.875, {0: 1.0, 1: 0.75})
    >>> results["hard_negative_accuracy"], results["n_hard_negatives"]
    (1.0, 1)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ConceptDetection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "scores": datasets.Value("float64"),
                    "categories": datasets.Value("string"),
                    "concept_ids": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2501.17148"],
            codebase_urls=["https://github.com/stanfordnlp/axbench"],
        )

    def _compute(self, scores, categories, concept_ids, imbalance=False, n_resamples=1000, confidence=0.95,
                 seed=0):
        rows = pd.DataFrame(
            {"method": "model", "concept_id": concept_ids, "category": categories, "score": scores}
        )
        per_concept = concept_detection(rows)
        summary = summarize_detection(per_concept, n_resamples, confidence, seed).iloc[0]
        results = {
            "auroc": float(summary["auroc_mean"]),
            "auroc_ci_low": float(summary["auroc_ci_low"]),
            "auroc_ci_high": float(summary["auroc_ci_high"]),
            "n_concepts": int(summary["n_concepts"]),
            "n_undefined": int(summary["n_undefined"]),
            "n_unscored": int(summary["n_unscored"]),
            "hard_negative_accuracy": float(summary["hard_negative_accuracy_mean"]),
            "hard_negative_accuracy_ci_low": float(summary["hard_negative_accuracy_ci_low"]),
            "hard_negative_accuracy_ci_high": float(summary["hard_negative_accuracy_ci_high"]),
            "n_hard_negative_concepts": int(summary["n_hard_negative_concepts"]),
            "n_hard_negatives": int(summary["n_hard_negatives"]),
            "macro_accuracy": float(summary["macro_accuracy"]),
            "f1": float(summary["f1"]),
            "per_concept_auroc": {int(c): float(a) for c, a in zip(per_concept["concept_id"], per_concept["auroc"])},
        }
        if imbalance:
            skewed = summarize_imbalance(imbalance_detection(rows), n_resamples, confidence, seed).iloc[0]
            results |= {
                "imbalance_precision": float(skewed["precision"]),
                "imbalance_recall": float(skewed["recall"]),
                "imbalance_f1": float(skewed["f1_mean"]),
                "imbalance_f1_ci_low": float(skewed["f1_ci_low"]),
                "imbalance_f1_ci_high": float(skewed["f1_ci_high"]),
            }
        return results
