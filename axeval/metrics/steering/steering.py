"""AxBench steering score: judge ratings → harmonic mean → factor chosen on one half, scored on the other."""

import datasets
import evaluate
import pandas as pd

from axeval.protocol import check_protocol, parse_failures_score_zero
from axeval.steering import score_generations, select_factors, summarize_steering

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
The steering score of AxBench. An LLM judge rates every steered generation 0-2 on three criteria: the
concept is present, the text is on the instruction's topic, the text is fluent. A generation scores the
harmonic mean of its three ratings (0 if any is 0). Per concept, the steering factor with the best mean
score on the "selection" prompts is chosen, and the concept's score is the mean over the "heldout" prompts
at that factor; the metric is the mean over concepts, with a seeded 95% bootstrap interval over concepts.
Methods without a factor pass one factor value (NaN allowed). A rating the judge's answer did not yield
(NaN or None) excludes its generation, and the exclusions are counted (AxBench scored them 0:
`protocol="reference"` does too, and then the module equals AxBench's evaluation on the same ratings). With
`suppression=True` the concept term is 2 - concept: the score rewards keeping the concept out.
"""

_KWARGS_DESCRIPTION = """
Args:
    concept_ids (`list` of `int`): the concept steered towards, per generation.
    prompt_ids (`list` of `int`): the instruction of each generation.
    halves (`list` of `str`): "selection" or "heldout", per generation.
    factors (`list` of `float`): the steering factor, finite (one value, or NaN in every row, for factor-free
        methods).
    concept_ratings, instruction_ratings, fluency_ratings (`list` of `float`): the judge's ratings 0, 1 or 2,
        NaN or None where the judge's answer could not be parsed; anything else is refused.
    suppression (`bool`, default False): score concept suppression (concept term inverted).
    n_resamples (`int`, default 1000), confidence (`float`, default 0.95), seed (`int`, default 0):
        the bootstrap over concepts.
    protocol (`str`, default "fixed"): "reference" scores a missing rating 0, as AxBench did.
Returns:
    score (`float`): mean over concepts of the held-out score at the chosen factor (0-2);
        score_ci_low, score_ci_high.
    concept_rating, instruction_rating, fluency_rating (`float`): the same for each rating.
    n_concepts (`int`), n_undefined (`int`): concepts seen, concepts without a scored held-out generation.
    n_generations, n_parse_failures (`int`), parse_failure_rate (`float`): generations excluded for
        unparsed ratings.
    chosen_factors (`dict`): concept id -> the factor chosen on the selection half.
Examples:
    >>> import evaluate
    >>> steering = evaluate.load("axbench/steering")  # doctest: +SKIP
    >>> steering = Steering()  # the same module, without the Hub
    >>> results = steering.compute(
    ...     concept_ids=[0, 0, 0, 0],
    ...     prompt_ids=[0, 0, 1, 1],
    ...     halves=["selection", "selection", "heldout", "heldout"],
    ...     factors=[1.0, 2.0, 1.0, 2.0],
    ...     concept_ratings=[1, 2, 2, 2],
    ...     instruction_ratings=[2, 2, 2, 0],
    ...     fluency_ratings=[2, 2, 1, 2])
    >>> results["score"], results["chosen_factors"]
    (0.0, {0: 2.0})
    >>> results = steering.compute(
    ...     concept_ids=[0, 0], prompt_ids=[0, 1], halves=["selection", "heldout"],
    ...     factors=[float("nan")] * 2, concept_ratings=[2, 2], instruction_ratings=[2, None],
    ...     fluency_ratings=[2, 2])
    >>> results["n_parse_failures"], results["n_undefined"]
    (1, 1)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Steering(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "concept_ids": datasets.Value("int64"),
                    "prompt_ids": datasets.Value("int64"),
                    "halves": datasets.Value("string"),
                    "factors": datasets.Value("float64"),
                    "concept_ratings": datasets.Value("float64"),
                    "instruction_ratings": datasets.Value("float64"),
                    "fluency_ratings": datasets.Value("float64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2501.17148"],
            codebase_urls=["https://github.com/stanfordnlp/axbench"],
        )

    def _compute(self, concept_ids, prompt_ids, halves, factors, concept_ratings, instruction_ratings,
                 fluency_ratings, suppression=False, n_resamples=1000, confidence=0.95, seed=0, protocol="fixed"):
        judged = pd.DataFrame(
            {
                "method": "model",
                "concept_id": concept_ids,
                "prompt_id": prompt_ids,
                "half": halves,
                # None (a null in the Arrow table) becomes NaN: the one way a missing rating is spelled.
                "factor": pd.Series(factors, dtype=float),
                "concept_rating": pd.Series(concept_ratings, dtype=float),
                "instruction_rating": pd.Series(instruction_ratings, dtype=float),
                "fluency_rating": pd.Series(fluency_ratings, dtype=float),
            }
        )
        scored = score_generations(judged, suppression=suppression,
                                   parse_failures_as_zero=parse_failures_score_zero(check_protocol(protocol)))
        selected = select_factors(scored)
        summary = summarize_steering(selected, scored, n_resamples, confidence, seed).iloc[0]
        return {
            "score": float(summary["score_mean"]),
            "score_ci_low": float(summary["score_ci_low"]),
            "score_ci_high": float(summary["score_ci_high"]),
            "concept_rating": float(summary["concept_rating"]),
            "instruction_rating": float(summary["instruction_rating"]),
            "fluency_rating": float(summary["fluency_rating"]),
            "n_concepts": int(summary["n_concepts"]),
            "n_undefined": int(summary["n_undefined"]),
            "n_generations": int(summary["n_generations"]),
            "n_parse_failures": int(summary["n_parse_failures"]),
            "parse_failure_rate": float(summary["parse_failure_rate"]),
            "chosen_factors": {int(c): float(f) for c, f in zip(selected["concept_id"], selected["factor"])},
        }
