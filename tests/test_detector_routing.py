"""Every method of the registry through latent inference (residual, text and target-model detectors; steering-only
methods skipped), detection-only dictionaries refused or skipped by steering, and `--dataset-config` made optional."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from axdata.concepts import Concept
from axdata.llm.types import Completion
from axeval.cli.infer import infer_app
from axeval.stages import methods as stage_methods
from axmethods.dictionary import DictionaryError, SteeringDictionary
from axmethods.inference.latent import calibrate, latent_inference
from axmethods.methods.bow import BagOfWords, BoW
from axmethods.methods.diffmean import DiffMean
from axmethods.methods.prompt import PromptDetection, PromptSteering, RelevanceRater, SteeringPrompts
from axmethods.results import load_result

LAYER = 1
CONCEPTS = [Concept(0, "the sea", genres=("text",)), Concept(1, "Paris", genres=("text",))]
SEA = ["The sea is wide and blue.", "Waves of the sea hit the shore.", "Sailing on the deep sea.",
       "The sea and the sky meet.", "Salt water of the sea.", "A calm sea at dawn."]
PARIS = ["Paris is the capital of France.", "The capital of France is Paris.", "I love Paris in spring.",
         "Paris, France, by the river.", "Walking in Paris at night.", "Paris has old bridges."]
NEUTRAL = ["Numbers 0 1 2 3.", "Hello world.", "A quick brown fox.", "The lazy dog sleeps.", "Apples and zebras.",
           "Punctuation ; , . !"]


def train_frame() -> pd.DataFrame:
    rows = [("Write something.", t, "the sea", "text", "positive", 0) for t in SEA]
    rows += [("Write something.", t, "Paris", "text", "positive", 1) for t in PARIS]
    rows += [("Say anything.", t, "EEEEE", "text", "negative", -1) for t in NEUTRAL]
    frame = pd.DataFrame(rows, columns=["input", "output", "output_concept", "concept_genre", "category", "concept_id"])
    return frame.assign(dataset_category="instruction")


def latent_frame() -> pd.DataFrame:
    rows = []
    for cid, name, own, other in ((0, "the sea", SEA, PARIS), (1, "Paris", PARIS, SEA)):
        rows += [("Write something.", own[k], name, "text", "positive", cid) for k in (0, 3)]
        rows += [("Say anything.", NEUTRAL[2 * cid], name, "text", "negative", cid),
                 ("Write something.", other[1], name, "text", "hard negative", cid)]
    frame = pd.DataFrame(rows, columns=["input", "output", "output_concept", "concept_genre", "category", "concept_id"])
    return frame.assign(dataset_category="instruction")


def pool_frame() -> pd.DataFrame:
    return pd.DataFrame({"input": ["Say anything."] * 3, "output": NEUTRAL[:3], "output_concept": "EEEEE",
                         "concept_genre": "text", "category": "negative", "concept_id": -1,
                         "dataset_category": "instruction"})


class FakeBackend:
    """Rates 2 when the concept's name appears in the text, 0 for Paris-free sea texts, no rating otherwise."""

    model_name = "fake"

    def __init__(self):
        self.requests = []

    async def complete(self, request):
        return (await self.complete_many([request]))[0]

    async def complete_many(self, requests, desc=None):
        self.requests.extend(requests)
        answers = []
        for request in requests:
            content = request.messages[0]["content"]
            concept = content.split('concept "', 1)[1].split('"', 1)[0]
            text = content.rsplit("Text fragment: ", 1)[1]
            if concept.lower() in text.lower():
                answers.append("Rating: [[2]]")
            elif "Numbers" in text:
                answers.append("no idea")  # unparsable: NaN
            else:
                answers.append("Rating: [[0]]")
        return [Completion(text=a, model="fake") for a in answers]


@pytest.fixture
def fitted(tiny_llama_target):
    target, train = tiny_llama_target, train_frame()
    backend = FakeBackend()
    return SimpleNamespace(
        target=target,
        diffmean=DiffMean().fit(target, train, CONCEPTS, LAYER),
        bow=BoW().fit(target, train, CONCEPTS, LAYER),
        detection=PromptDetection({"max_tokens": 4}).fit(target, train, CONCEPTS, LAYER),
        steering=PromptSteering({"llm_prompts": "false"}).fit(target, train, CONCEPTS, LAYER),
        backend=backend,
    )


def test_each_method_has_its_result_type_and_detector(fitted) -> None:
    results = (fitted.diffmean, fitted.bow, fitted.detection, fitted.steering)
    assert [type(r) for r in results] == [SteeringDictionary, BagOfWords, RelevanceRater, SteeringPrompts]
    assert [r.detector for r in results] == ["residual", "text", "target-model", None]
    assert [r.steers for r in results] == [True, False, False, True]


def test_baseline_results_round_trip(fitted, tmp_path: Path) -> None:
    texts = [fitted.target.format_transcript("Write something.", t) for t in SEA[:2] + PARIS[:2]]
    for name in ("bow", "detection", "steering"):
        result = getattr(fitted, name)
        result.save_pretrained(tmp_path / name)
        loaded = load_result(tmp_path / name)
        assert type(loaded) is type(result) and loaded.concepts == result.concepts
        assert loaded.config_hash == result.config_hash and "axbench" in (tmp_path / name / "README.md").read_text()
    torch.testing.assert_close(load_result(tmp_path / "bow").score_texts(texts), fitted.bow.score_texts(texts))
    assert load_result(tmp_path / "steering").prompts == fitted.steering.prompts
    assert load_result(tmp_path / "detection").settings == fitted.detection.settings


def test_every_detector_in_latent_mode(fitted, caplog: pytest.LogCaptureFixture) -> None:
    target, latent = fitted.target, latent_frame()
    with caplog.at_level(logging.INFO, logger="axmethods.inference.latent"):
        scores = latent_inference(target, [fitted.diffmean, fitted.bow, fitted.detection, fitted.steering], latent,
                                  progress=False, chat_backend=fitted.backend)
    assert "prompt-steering: steering-only" in caplog.text
    assert scores["method"].value_counts().to_dict() == {"diffmean": 8, "bow": 8, "prompt-detection": 8}
    by_method = {m: f.reset_index(drop=True) for m, f in scores.groupby("method")}
    # Residual rows are exactly what the residual-only path gives.
    alone = latent_inference(target, [fitted.diffmean], latent, progress=False)
    np.testing.assert_allclose(by_method["diffmean"]["score"], alone["score"], rtol=1e-6)
    assert (by_method["diffmean"]["max_token_index"] >= target.prefix_length).all()
    assert by_method["diffmean"]["max_token"].notna().all()
    # BoW: P(positive) of the same transcripts, each row for its own concept; no token columns.
    texts = [target.format_transcript(i, o) for i, o in zip(latent["input"], latent["output"])]
    matrix = fitted.bow.score_texts(texts)
    expected = matrix[torch.arange(len(latent)), torch.tensor(latent["concept_id"].to_numpy())].numpy()
    np.testing.assert_allclose(by_method["bow"]["score"], expected, rtol=1e-6)
    assert by_method["bow"]["max_token_index"].isna().all() and by_method["bow"]["max_token"].isna().all()
    positives = by_method["bow"]["category"] == "positive"
    assert by_method["bow"]["score"][positives].min() > by_method["bow"]["score"][~positives].max()
    # Prompt detection: the output rated for the row's own concept; the unparsable answer stays NaN and is counted.
    rated = by_method["prompt-detection"]
    assert len(fitted.backend.requests) == len(latent)
    assert (rated["score"][rated["category"] == "positive"] == 2.0).all()
    nan_rows = rated["output"].str.contains("Numbers")
    assert nan_rows.sum() == 1 and rated["score"][nan_rows].isna().all()
    assert scores.attrs["nan_scores"] == {"diffmean": 0, "bow": 0, "prompt-detection": 1}
    assert rated["max_token"].isna().all()
    assert {"input", "output", "row_id", "source_split"} <= set(scores.columns)


def test_every_detector_in_latent_imbalance_mode(fitted) -> None:
    target, latent, pool = fitted.target, latent_frame(), pool_frame()
    scores = latent_inference(target, [fitted.steering, fitted.bow, fitted.diffmean, fitted.detection], latent,
                              mode="latent_imbalance", imbalance_pool=pool, progress=False,
                              chat_backend=lambda: fitted.backend)  # a factory works too
    n_positives = int((latent["category"] == "positive").sum())
    for method in ("diffmean", "bow", "prompt-detection"):
        rows = scores[scores["method"] == method]
        assert len(rows) == 2 * len(pool) + n_positives
        shared = rows[rows["concept_id"] == -1]
        assert sorted(shared["scored_concept_id"].unique()) == [0, 1]
        assert (shared.groupby("scored_concept_id").size() == len(pool)).all()
    bow = scores[scores["method"] == "bow"]
    pool_texts = [target.format_transcript(i, o) for i, o in zip(pool["input"], pool["output"])]
    matrix = fitted.bow.score_texts(pool_texts)
    shared = bow[bow["concept_id"] == -1]
    expected = matrix[torch.tensor(shared["row_id"].to_numpy()), torch.tensor(shared["scored_concept_id"].to_numpy())]
    np.testing.assert_allclose(shared["score"], expected.numpy(), rtol=1e-6)
    assert bow["max_token_index"].isna().all()
    detection = scores[scores["method"] == "prompt-detection"]
    # "Numbers 0 1 2 3." is in the pool and rated for both concepts: two NaN answers, kept NaN.
    assert detection["score"].isna().sum() == 2 == scores.attrs["nan_scores"]["prompt-detection"]
    # Same text, same concept, same score in both modes (residual path).
    own = latent_inference(target, [fitted.diffmean], latent, progress=False)
    a = own[own["category"] == "positive"].set_index(["row_id", "concept_id"])["score"].sort_index()
    dm = scores[(scores["method"] == "diffmean") & (scores["category"] == "positive")]
    b = dm.set_index(["row_id", "concept_id"])["score"].sort_index()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_prompt_detection_through_the_target_model_by_default(fitted) -> None:
    # No backend given: a TransformersChatBackend of the target (random tiny model: NaN is a valid outcome).
    scores = latent_inference(fitted.target, [fitted.detection], latent_frame().iloc[:2], progress=False)
    assert len(scores) == 2 and scores.attrs["nan_scores"]["prompt-detection"] == int(scores["score"].isna().sum())
    values = scores["score"].dropna()
    assert values.isin([0.0, 1.0, 2.0]).all()


def test_only_residual_dictionaries_calibrate(fitted) -> None:
    scores = latent_inference(fitted.target, [fitted.diffmean, fitted.bow], latent_frame(), progress=False)
    assert calibrate(fitted.diffmean, scores).calibration is not None
    with pytest.raises(DictionaryError, match="no residual detector"):
        calibrate(fitted.bow, scores)


def test_detection_only_results_have_no_steerer(fitted) -> None:
    for result in (fitted.bow, fitted.detection):
        with pytest.raises(DictionaryError, match="detection-only"):
            result.steerer()
    assert fitted.steering.steerer().factor_free


def _stage_context(tmp_path: Path, target, split: pd.DataFrame | dict, protocol: str = "fixed") -> SimpleNamespace:
    splits = split if isinstance(split, dict) else {"steering": split}
    dataset = SimpleNamespace(split=lambda name: splits[name], has_split=lambda name: name in splits,
                              directory=tmp_path / "data", config="c")
    from axeval.config import InferenceSection, MethodsSection, RunSection

    inference = InferenceSection(factors=[1.0], max_new_tokens=3, unsteered_baseline=False, steering_batch_size=8,
                                 latent_batch_size=4)
    ctx = SimpleNamespace(config=SimpleNamespace(inference=inference,
                                                 run=RunSection(seed=0, layer=LAYER, protocol=protocol),
                                                 methods=MethodsSection()),
                          target_model=lambda: target,
                          run_dir=SimpleNamespace(inference_dir=tmp_path / "inference",
                                                  dictionaries_dir=tmp_path / "dictionaries"))
    return ctx, dataset


def test_steering_stage_skips_detection_only_dictionaries(fitted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    latent = latent_frame()
    steerable = calibrate(fitted.diffmean, latent_inference(fitted.target, [fitted.diffmean], latent, progress=False))
    prompts = pd.DataFrame([{"dataset_name": "AlpacaEval", "concept_id": c, "input_concept": CONCEPTS[c].concept,
                             "input_id": 0, "original_prompt": "Tell me a story.", "half": "selection"}
                            for c in (0, 1)])
    ctx, dataset = _stage_context(tmp_path, fitted.target, prompts)
    monkeypatch.setattr(stage_methods, "run_dataset", lambda ctx: dataset)
    monkeypatch.setattr(stage_methods, "load_artifacts",
                        lambda ctx: [steerable, fitted.bow, fitted.detection, fitted.steering])
    with caplog.at_level(logging.INFO, logger="axeval.stages.methods"):
        summary = stage_methods.SteeringStage().run(ctx)
    assert summary["per_method"] == {"diffmean": 2, "prompt-steering": 2}
    assert "bow is detection-only" in caplog.text and "prompt-detection is detection-only" in caplog.text


def test_latent_stage_scores_every_method(fitted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, dataset = _stage_context(tmp_path, fitted.target, {"latent": latent_frame(), "latent_imbalance": pool_frame()})
    monkeypatch.setattr(stage_methods, "run_dataset", lambda ctx: dataset)
    monkeypatch.setattr(stage_methods, "load_artifacts",
                        lambda ctx: [fitted.diffmean, fitted.bow, fitted.detection, fitted.steering])
    monkeypatch.setattr("axmethods.chat_backend.TransformersChatBackend", lambda target: fitted.backend)
    summary = stage_methods.LatentStage().run(ctx)
    assert summary["methods"] == ["diffmean", "bow", "prompt-detection"]
    assert summary["nan_scores"]["prompt-detection"] == 1
    latent = pd.read_parquet(tmp_path / "inference" / "latent.parquet")
    imbalance = pd.read_parquet(tmp_path / "inference" / "latent_imbalance.parquet")
    assert set(latent["method"]) == set(imbalance["method"]) == {"diffmean", "bow", "prompt-detection"}
    # Only the residual dictionary was calibrated and written back.
    assert SteeringDictionary.load(tmp_path / "dictionaries" / "diffmean").calibration is not None
    assert not (tmp_path / "dictionaries" / "bow").exists()


def test_a_dictionary_that_cannot_be_calibrated_costs_only_its_own_steering(
        fitted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A dictionary that never fires (seen: Probe on a random 2B-shape model) is not calibrated and not steered;
    the other dictionaries' calibrations and the imbalance scores are still made, and both stages finish."""
    import dataclasses

    silent = dataclasses.replace(fitted.diffmean, method="probe", weight=torch.zeros_like(fitted.diffmean.weight))
    ctx, dataset = _stage_context(tmp_path, fitted.target, {"latent": latent_frame(), "latent_imbalance": pool_frame()})
    monkeypatch.setattr(stage_methods, "run_dataset", lambda ctx: dataset)
    monkeypatch.setattr(stage_methods, "load_artifacts", lambda ctx: [silent, fitted.diffmean])
    with caplog.at_level(logging.WARNING, logger="axeval.stages.methods"):
        summary = stage_methods.LatentStage().run(ctx)
    assert list(summary["uncalibrated"]) == ["probe"] and "positive max activation" in summary["uncalibrated"]["probe"]
    assert "probe is not calibrated and will not be steered" in caplog.text
    assert "not calibrated, so not steered: probe" in stage_methods.LatentStage().describe(summary)
    calibrated = SteeringDictionary.load(tmp_path / "dictionaries" / "diffmean")
    assert calibrated.calibration is not None and not (tmp_path / "dictionaries" / "probe").exists()
    assert set(pd.read_parquet(tmp_path / "inference" / "latent_imbalance.parquet")["method"]) == {"probe", "diffmean"}

    prompts = pd.DataFrame([{"dataset_name": "AlpacaEval", "concept_id": c, "input_concept": CONCEPTS[c].concept,
                             "input_id": 0, "original_prompt": "Tell me a story.", "half": "selection"}
                            for c in (0, 1)])
    ctx, dataset = _stage_context(tmp_path, fitted.target, prompts)
    monkeypatch.setattr(stage_methods, "run_dataset", lambda ctx: dataset)
    monkeypatch.setattr(stage_methods, "load_artifacts", lambda ctx: [silent, calibrated])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="axeval.stages.methods"):
        summary = stage_methods.SteeringStage().run(ctx)
    assert summary["per_method"] == {"diffmean": 2}
    assert "probe has no calibration" in caplog.text


# ----- CLI -----------------------------------------------------------------------------------------

def _write_data(root: Path, configs: tuple[str, ...] = ("cfg",)) -> Path:
    for config in configs:
        (root / config).mkdir(parents=True)
        latent_frame().to_parquet(root / config / "latent-00000-of-00001.parquet")
        pool_frame().to_parquet(root / config / "latent_imbalance-00000-of-00001.parquet")
        pd.DataFrame([{"dataset_name": "AlpacaEval", "concept_id": c, "input_concept": CONCEPTS[c].concept,
                       "input_id": 0, "original_prompt": "Tell me a story.", "half": "selection"} for c in (0, 1)]
                     ).to_parquet(root / config / "steering-00000-of-00001.parquet")
    return root


def test_infer_cli_routes_every_method_and_config_is_optional(fitted, tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = _write_data(tmp_path / "data")
    for name in ("diffmean", "bow", "steering"):
        getattr(fitted, name).save_pretrained(tmp_path / name)
    runner = CliRunner()
    model = ["--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32", "--data", str(data)]
    dictionaries = [part for name in ("diffmean", "bow", "steering") for part in ("--result", str(tmp_path / name))]
    for mode in ("latent", "latent_imbalance"):  # no --dataset-config: the dataset holds one
        out = tmp_path / f"{mode}.parquet"
        result = runner.invoke(infer_app, ["latent", *dictionaries, *model, "--mode", mode, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "Skipped prompt-steering" in result.output
        scores = pd.read_parquet(out)
        assert set(scores["method"]) == {"diffmean", "bow"}
        assert scores.loc[scores["method"] == "bow", "max_token"].isna().all()
    assert SteeringDictionary.load(tmp_path / "diffmean").calibration is not None
    assert isinstance(load_result(tmp_path / "bow"), BagOfWords)  # nothing to calibrate, nothing written back
    # Steering: the calibrated residual dictionary and prompt steering work, detection-only ones are refused.
    steer = ["steer", *model, "--factors", "1", "--max-new-tokens", "3"]
    result = runner.invoke(infer_app, [*steer, "--result", str(tmp_path / "diffmean"),
                                       "--out", str(tmp_path / "s.parquet")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(infer_app, [*steer, "--result", str(tmp_path / "steering"),
                                       "--out", str(tmp_path / "p.parquet")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(infer_app, [*steer, "--result", str(tmp_path / "bow"),
                                       "--out", str(tmp_path / "b.parquet")])
    assert result.exit_code == 1 and "detection-only" in result.output
    assert not (tmp_path / "b.parquet").exists()


def test_infer_cli_needs_config_when_the_dataset_has_several(fitted, tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = _write_data(tmp_path / "data", ("alpha", "beta"))
    fitted.diffmean.save_pretrained(tmp_path / "dict")
    runner = CliRunner()
    common = ["--result", str(tmp_path / "dict"), "--data", str(data), "--model", str(tiny_llama_dir),
              "--device", "cpu", "--dtype", "float32"]
    for command in ("latent", "steer"):
        result = runner.invoke(infer_app, [command, *common, "--out", str(tmp_path / f"{command}.parquet")])
        assert result.exit_code == 1 and "alpha, beta" in result.output and "--dataset-config" in result.output
    result = runner.invoke(infer_app, ["latent", *common, "--dataset-config", "beta", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 0, result.output
    assert math.isfinite(pd.read_parquet(tmp_path / "x.parquet")["score"].sum())


def test_reference_latent_stage_scores_an_unrated_prompt_detection_answer_minus_one(
        fitted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`protocol: reference`: AxBench's PromptDetection scored an answer without a rating −1 (below every rated
    text); the answer is still counted as unrated. Residual scores have no such case and are not touched."""
    ctx, dataset = _stage_context(tmp_path, fitted.target, {"latent": latent_frame(), "latent_imbalance": pool_frame()},
                                  protocol="reference")
    monkeypatch.setattr(stage_methods, "run_dataset", lambda ctx: dataset)
    monkeypatch.setattr(stage_methods, "load_artifacts", lambda ctx: [fitted.diffmean, fitted.detection])
    monkeypatch.setattr("axmethods.chat_backend.TransformersChatBackend", lambda target: fitted.backend)
    summary = stage_methods.LatentStage().run(ctx)
    assert summary["nan_scores"]["prompt-detection"] == 1 and summary["imbalance_nan_scores"]["prompt-detection"] == 2
    for name, unrated in (("latent", 1), ("latent_imbalance", 2)):
        scores = pd.read_parquet(tmp_path / "inference" / f"{name}.parquet")
        rated = scores[scores["method"] == "prompt-detection"]
        assert rated["score"].notna().all() and (rated["score"] == -1.0).sum() == unrated
        if "output" in rated:  # latent mode keeps the texts: the unrated one is "Numbers 0 1 2 3."
            assert rated.loc[rated["output"].str.contains("Numbers"), "score"].eq(-1.0).all()
        assert scores.loc[scores["method"] == "diffmean", "score"].gt(-1.0).any()
