"""Science check: methods fitted on the real Concept10 train split detect concepts on its latent split.

SmolLM2-135M-Instruct (embedded) at layer 10, texts truncated to 96 tokens, 5 of the 10 concepts of
prod_2b_l20_v1. Scores are max-pooled over non-prefix tokens, AUROC positives vs negatives (hard
negatives dropped, as AxBench's evaluator does) per concept, then averaged.
"""

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from axdata.builders import read_concepts, read_split
from axdata.builders.axbench_import import import_axbench
from axmethods.activations import ActivationCollector, resolve_dtype
from axmethods.methods.diffmean import DiffMean
from axmethods.methods.pca import PCA
from axmethods.methods.probe import Probe

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "axbench" / "concept10" / "prod_2b_l20_v1"
LAYER, MAX_LENGTH, N_CONCEPTS = 10, 96, 5


@pytest.mark.slow
@pytest.mark.skipif(not SOURCE.is_dir(), reason=f"AxBench Concept10 data not found at {SOURCE} (shared data "
                                                 "checkout absent); the science check needs the real data.")
def test_concept10_detection_auroc(tmp_path):
    from axmethods.models import load_target_model

    import_axbench(SOURCE, tmp_path, "c10")
    concepts = read_concepts(tmp_path, "c10")[:N_CONCEPTS]
    train = read_split(tmp_path, "c10", "train")
    latent = read_split(tmp_path, "c10", "latent")
    latent = latent[latent["concept_id"].isin([c.concept_id for c in concepts])
                    & latent["category"].isin(["positive", "negative"])].reset_index(drop=True)

    target = load_target_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    dtype = resolve_dtype("auto", target)
    collector = ActivationCollector(target, LAYER, dtype=dtype, max_length=MAX_LENGTH, keep_all=True)
    config = {"max_length": MAX_LENGTH}
    started = time.perf_counter()
    dictionaries = {
        "diffmean": DiffMean(config).fit(target, train, concepts, LAYER, collector=collector),
        "pca": PCA(config).fit(target, train, concepts, LAYER, collector=collector),
        "probe": Probe(config).fit(target, train, concepts, LAYER, collector=collector),
    }
    fit_seconds = time.perf_counter() - started

    texts = [target.format_transcript(i, o) for i, o in zip(latent["input"], latent["output"])]
    activations = collector.collect(texts)
    row_of = {c.concept_id: i for i, c in enumerate(concepts)}
    rows = torch.tensor([row_of[c] for c in latent["concept_id"]])
    labels = latent["category"].eq("positive").to_numpy()
    aurocs = {}
    for name, dictionary in dictionaries.items():
        pooled = activations.max_pool(activations.values.float() @ dictionary.weight.T)  # [texts, concepts]
        own = pooled[torch.arange(len(rows)), rows].numpy()
        per_concept = [roc_auc_score(labels[(rows == r).numpy()], own[(rows == r).numpy()])
                       for r in range(len(concepts))]
        aurocs[name] = float(np.mean(per_concept))
    report = ", ".join(f"{name} {value:.3f}" for name, value in aurocs.items())
    print(f"\nConcept10 prod_2b_l20_v1, SmolLM2-135M L{LAYER}, {len(concepts)} concepts, {MAX_LENGTH} tokens, "
          f"{dtype or target.dtype}: mean AUROC {report}; fit {fit_seconds:.0f} s, "
          f"{collector.forward_texts} texts through the model")
    assert aurocs["diffmean"] >= 0.85
    assert aurocs["probe"] >= 0.85
    assert aurocs["diffmean"] > aurocs["pca"]
