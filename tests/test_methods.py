"""Every method on a tiny random model and a small synthetic train split (shapes, norms, seeds, losses)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA as SkPCA
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from axdata.concepts import Concept
from axdata.llm.types import Completion
from axdata.settings import build_settings as parse_config
from axmethods.activations import ActivationCollector
from axmethods.methods import MethodConfigError, TrainingDataError, TrainingSet
from axmethods.methods.bow import BoW
from axmethods.methods.diffmean import DiffMean
from axmethods.methods.lat import LAT
from axmethods.methods.pca import PCA
from axmethods.methods.probe import Probe, ProbeConfig
from axmethods.methods.prompt import PromptDetection, PromptSteering, PromptSteeringConfig, parse_rating
from axmethods.methods.reft_r1 import ReFTr1, ReFTr1Config
from axmethods.methods.sae import SAE, SAEA, SAEAConfig, SAEConfig, feature_aurocs
from axmethods.methods.ssv import SSV, SSVConfig
from axmethods.models import load_target_model

LAYER = 1
CONCEPTS = [Concept(0, "the sea", ref="https://www.neuronpedia.org/m/1-res/5", genres=("text",)),
            Concept(1, "Paris", ref="https://www.neuronpedia.org/m/1-res/7", genres=("text",))]


def _train_frame() -> pd.DataFrame:
    rows = []
    sea = ["The sea is wide and blue.", "Waves of the sea hit the shore.", "Sailing on the deep sea.",
           "The sea and the sky meet.", "Salt water of the sea.", "A calm sea at dawn."]
    paris = ["Paris is the capital of France.", "The capital of France is Paris.", "I love Paris in spring.",
             "Paris, France, by the river.", "Walking in Paris at night.", "Paris has old bridges."]
    neutral = ["Numbers 0 1 2 3.", "Hello world.", "A quick brown fox.", "The lazy dog sleeps.",
               "Apples and zebras.", "Punctuation ; , . !"]
    for _i, text in enumerate(sea):
        rows.append(("Write something.", text, "the sea", "text", "positive", 0))
    for _i, text in enumerate(paris):
        rows.append(("Write something.", text, "Paris", "text", "positive", 1))
    for text in neutral:
        rows.append(("Say anything.", text, "EEEEE", "text", "negative", -1))
    for text in ["def add(a, b): return a + b", "x = 1"]:
        rows.append(("Write code.", text, "EEEEE", "code", "negative", -1))
    frame = pd.DataFrame(rows, columns=["input", "output", "output_concept", "concept_genre", "category",
                                        "concept_id"])
    frame["dataset_category"] = "instruction"
    return frame


@pytest.fixture(scope="module")
def train_df():
    return _train_frame()


@pytest.fixture(scope="module")
def target(tiny_llama_dir):
    return load_target_model(str(tiny_llama_dir), device="cpu", dtype="float32")


def test_training_set_uses_positives_and_same_genre_shared_negatives(train_df):
    data = TrainingSet.from_frame(train_df, CONCEPTS)
    assert data.members.shape == (2, 12)
    assert data.labels.sum(1).tolist() == [6.0, 6.0]
    assert len(data.instructions) == 18  # 12 positives + 6 text negatives; the code ones are unused
    assert data.shared.sum() == 6
    with pytest.raises(TrainingDataError, match="no positive rows"):
        TrainingSet.from_frame(train_df, [Concept(9, "ghost")])
    with pytest.raises(TrainingDataError, match="genre 'math'"):
        TrainingSet.from_frame(train_df, [Concept(0, "the sea", genres=("math",))])
    with pytest.raises(TrainingDataError, match=r"'output' column has 1 row\(s\) that are not text \(first: row 3\)"):
        TrainingSet.from_frame(train_df.assign(output=[None if i == 3 else o for i, o in enumerate(train_df["output"])]),
                               CONCEPTS)


def test_config_parsing():
    # TrainingArguments' names, the one settings vocabulary of every method; the old lr / epochs are unknown.
    config = parse_config(ProbeConfig, {"learning_rate": "0.5", "max_length": "96", "num_train_epochs": 2})
    assert (config.learning_rate, config.max_length, config.num_train_epochs) == (0.5, 96, 2)
    for old in ("lr", "epochs", "batch_size"):
        with pytest.raises(MethodConfigError, match=f"no field.*'{old}'"):
            parse_config(ProbeConfig, {old: 1})
    assert parse_config(PromptSteeringConfig, {"llm_prompts": "false"}).llm_prompts is False  # not type=bool
    with pytest.raises(MethodConfigError, match="no field"):
        parse_config(ProbeConfig, {"learning_rat": "1"})


def test_diffmean_matches_token_weighted_means(target, train_df):
    dictionary = DiffMean({"activation_dtype": "model"}).fit(target, train_df, CONCEPTS, LAYER)
    assert dictionary.weight.shape == (2, target.hidden_size)
    torch.testing.assert_close(dictionary.weight.norm(dim=1), torch.ones(2))
    assert dictionary.activation == "identity" and dictionary.hook_module.endswith(f"layers.{LAYER}")
    data = TrainingSet.from_frame(train_df, CONCEPTS)
    acts = ActivationCollector(target, LAYER, progress=False).collect(data.transcripts(target))
    members, labels = data.members[0], data.labels[0]
    pos = torch.cat([acts.text(i) for i in members[labels == 1].tolist()]).mean(0)
    neg = torch.cat([acts.text(i) for i in members[labels == 0].tolist()]).mean(0)
    torch.testing.assert_close(dictionary.weight[0], (pos - neg) / (pos - neg).norm(), atol=1e-5, rtol=1e-4)


def test_shared_negatives_go_through_the_model_once(target, train_df):
    seen = []
    handle = target.model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        DiffMean({"concepts_per_chunk": 1}).fit(target, train_df, CONCEPTS, LAYER)
    finally:
        handle.remove()
    assert sum(seen) == 6 + 6 + 6  # two concepts' positives + the 6 shared negatives once (not 24)


@pytest.mark.parametrize("method", [PCA, LAT])
def test_pca_and_lat_are_unit_and_deterministic(target, train_df, method):
    first = method().fit(target, train_df, CONCEPTS, LAYER).weight
    again = method().fit(target, train_df, CONCEPTS, LAYER).weight
    assert first.shape == (2, target.hidden_size)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(first, again)


def test_pca_equals_sklearn_first_component(target, train_df):
    weight = PCA({"activation_dtype": "model"}).fit(target, train_df, CONCEPTS, LAYER).weight
    data = TrainingSet.from_frame(train_df, CONCEPTS)
    acts = ActivationCollector(target, LAYER, progress=False).collect(data.transcripts(target))
    tokens = torch.cat([acts.text(i) for i in data.members[1][data.labels[1] == 1].tolist()]).numpy()
    expected = SkPCA(n_components=2).fit(tokens).components_[0]
    assert float(np.dot(weight[1].numpy(), expected)) == pytest.approx(1.0, abs=1e-4)  # sklearn's sign too


def test_probe_learns_unit_direction_and_honours_accumulation(target, train_df):
    probe = Probe({"num_train_epochs": 8, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 5e-2})
    dictionary = probe.fit(target, train_df, CONCEPTS, LAYER)
    torch.testing.assert_close(dictionary.weight.norm(dim=1), torch.ones(2))
    assert len(probe.loss_history) == 8 * math.ceil(3 / 2)  # 3 micro-batches per epoch, stepped every 2 (Trainer:
    # an epoch's last step takes its remaining micro-batch; accumulation never spans two epochs)
    assert np.mean(probe.loss_history[-3:]) < np.mean(probe.loss_history[:3])
    again = Probe({"num_train_epochs": 8, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 5e-2})
    torch.testing.assert_close(again.fit(target, train_df, CONCEPTS, LAYER).weight, dictionary.weight)


def test_reft_r1_trains_unit_relu_direction(target, train_df):
    config = ReFTr1Config(num_train_epochs=6, per_device_train_batch_size=4, learning_rate=5e-2)
    method = ReFTr1(config)
    dictionary = method.fit(target, train_df, CONCEPTS, LAYER)
    assert dictionary.activation == "relu"
    torch.testing.assert_close(dictionary.weight.norm(dim=1), torch.ones(2))
    assert len(method.loss_history) == 3 * 6
    assert np.mean(method.loss_history[-3:]) < np.mean(method.loss_history[:3])
    torch.testing.assert_close(ReFTr1(config).fit(target, train_df, CONCEPTS, LAYER).weight, dictionary.weight)
    assert not any(p.requires_grad is False for p in target.model.parameters())  # flags restored


def test_joint_reft_r1_row_matches_a_single_concept_run(target, train_df):
    config = ReFTr1Config(num_train_epochs=2, per_device_train_batch_size=4, learning_rate=5e-2)
    joint = ReFTr1(config).fit(target, train_df, CONCEPTS, LAYER).weight
    # Rows never interact, but the shuffles differ with the number of concepts: same direction, not bitwise.
    alone = ReFTr1(config).fit(target, train_df, CONCEPTS[:1], LAYER).weight
    assert torch.nn.functional.cosine_similarity(joint[0], alone[0], dim=0) > 0.9


def test_reft_r1_keeps_fp32_master_weights_on_a_bf16_model(tiny_llama_dir, train_df, monkeypatch):
    import axmethods.methods.lm_training as reft_module  # where ReFT-r1 (an LMRank1Method) trains its chunks

    bf16 = load_target_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    seen = []
    original = reft_module.train_chunk

    def spy(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        seen.append((model.weight.dtype, model.target.model.dtype))
        return result

    monkeypatch.setattr(reft_module, "train_chunk", spy)
    dictionary = ReFTr1(ReFTr1Config(num_train_epochs=1, per_device_train_batch_size=6)).fit(bf16, train_df, CONCEPTS, LAYER)
    assert seen == [(torch.float32, torch.bfloat16)]
    assert torch.isfinite(dictionary.weight).all()


def test_ssv_trains_on_positives_without_normalising(target, train_df):
    method = SSV(SSVConfig(num_train_epochs=4, per_device_train_batch_size=3))
    dictionary = method.fit(target, train_df, CONCEPTS, LAYER)
    assert dictionary.activation == "relu" and dictionary.weight.shape == (2, target.hidden_size)
    assert not torch.allclose(dictionary.weight.norm(dim=1), torch.ones(2))
    assert len(method.loss_history) == 2 * 4  # 6 positives / batch 3
    assert method.loss_history[-1] < method.loss_history[0]


def _write_sae(path, d, z, seed=0, plant=None, scale=0.01):
    generator = torch.Generator().manual_seed(seed)
    params = {"W_enc": torch.randn(d, z, generator=generator) * scale, "W_dec": torch.randn(z, d, generator=generator),
              "b_enc": torch.zeros(z), "b_dec": torch.zeros(d), "threshold": torch.full((z,), 0.5)}
    if plant is not None:
        feature, direction = plant
        params["W_enc"][:, feature] = direction
        params["threshold"][feature] = 0.0
    np.savez(path, **{k: v.numpy() for k, v in params.items()})
    return params


def test_sae_reads_encoder_and_steers_with_decoder(target, train_df, tmp_path):
    params = _write_sae(tmp_path / "params.npz", target.hidden_size, 16)
    dictionary = SAE(SAEConfig(sae_path=str(tmp_path / "params.npz"))).fit(target, train_df, CONCEPTS, LAYER)
    torch.testing.assert_close(dictionary.weight, params["W_enc"][:, [5, 7]].T)
    torch.testing.assert_close(dictionary.steering_vectors, params["W_dec"][[5, 7]])
    torch.testing.assert_close(dictionary.bias, torch.full((2,), -0.5))
    assert dictionary.config["sae_features"] == [5, 7]
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        SAE(SAEConfig(sae_path=str(tmp_path / "missing.npz"))).fit(target, train_df, CONCEPTS, LAYER)


def test_sae_steering_magnitude_is_axbench_max_activation(target, train_df, tmp_path):
    """AxBench steers an SAE feature with factor × its max activation in JumpReLU units: Neuronpedia's maxValue
    when given, else the latent rows' max JumpReLU activation (score + θ), never score alone."""
    from axmethods.inference.latent import calibrate

    _write_sae(tmp_path / "params.npz", target.hidden_size, 16)
    dictionary = SAE(SAEConfig(sae_path=str(tmp_path / "params.npz"))).fit(target, train_df, CONCEPTS, LAYER)
    scores = pd.DataFrame({"method": "sae", "layer": LAYER, "concept_id": [0, 0, 1], "score": [0.25, 1.5, 2.0]})
    calibrated = calibrate(dictionary, scores)
    torch.testing.assert_close(calibrated.calibration, torch.tensor([1.5 + 0.5, 2.0 + 0.5]))
    torch.testing.assert_close(calibrated.steering_magnitudes([0, 1], [2.0, 1.0]), torch.tensor([4.0, 2.5]))

    (tmp_path / "max.json").write_text('{"5": 12.5, "7": 3.0, "9": 1.0}')
    neuronpedia = SAE(SAEConfig(sae_path=str(tmp_path / "params.npz"), max_activations=str(tmp_path / "max.json"))
                      ).fit(target, train_df, CONCEPTS, LAYER)
    torch.testing.assert_close(neuronpedia.calibration, torch.tensor([12.5, 3.0]))
    assert calibrate(neuronpedia, scores) is neuronpedia  # the file's values are kept, not re-calibrated
    (tmp_path / "short.json").write_text('{"5": 12.5}')
    with pytest.raises(MethodConfigError, match=r"no value for SAE feature\(s\) \[7\]"):
        SAE(SAEConfig(sae_path=str(tmp_path / "params.npz"), max_activations=str(tmp_path / "short.json"))
            ).fit(target, train_df, CONCEPTS, LAYER)


def test_sae_a_picks_the_planted_feature(target, train_df, tmp_path):
    direction = DiffMean().fit(target, train_df, CONCEPTS, LAYER).weight[1]
    # Other features never pass their threshold (AUROC 0.5); the planted one separates the texts.
    _write_sae(tmp_path / "params.npz", target.hidden_size, 16, plant=(11, direction), scale=0.0)
    dictionary = SAEA(SAEAConfig(sae_path=str(tmp_path / "params.npz"), feature_batch=5)).fit(
        target, train_df, CONCEPTS, LAYER)
    assert dictionary.config["sae_features"][1] == 11


def test_feature_aurocs_match_sklearn():
    generator = torch.Generator().manual_seed(0)
    pooled = torch.randint(0, 4, (10, 3), generator=generator).float()  # many ties
    members = torch.tensor([[0, 1, 2, 3, 4, 5, -1], [4, 5, 6, 7, 8, 9, 0]])
    labels = torch.tensor([[1, 1, 0, 0, 1, 0, 0], [1, 0, 1, 0, 1, 0, 1]]).float()
    auroc = feature_aurocs(pooled, members, labels)
    for c in range(2):
        rows = members[c][members[c] >= 0]
        for f in range(3):
            expected = roc_auc_score(labels[c, :len(rows)].numpy(), pooled[rows, f].numpy())
            assert float(auroc[c, f]) == pytest.approx(expected, abs=1e-6)


def test_bow_equals_per_concept_sklearn_pipeline(target, train_df):
    classifier = BoW().fit(target, train_df, CONCEPTS, LAYER)
    assert classifier.detector == "text" and not classifier.steers
    data = TrainingSet.from_frame(train_df, CONCEPTS)
    texts = data.transcripts(target)
    scores = classifier.score_texts(texts)
    for c in range(2):
        rows = data.members[c].tolist()
        own = CountVectorizer()
        model = LogisticRegression(C=100, max_iter=1000).fit(own.fit_transform([texts[i] for i in rows]),
                                                              data.labels[c].numpy())
        expected = model.predict_proba(own.transform(texts))[:, 1]
        np.testing.assert_allclose(scores[:, c].numpy(), expected, atol=1e-3)
        assert roc_auc_score(data.labels[c].numpy(), scores[rows, c].numpy()) == 1.0


class _FakeBackend:
    model_name = "fake"

    def __init__(self, answer):
        self.answer = answer
        self.requests = []

    async def complete(self, request):
        return (await self.complete_many([request]))[0]

    async def complete_many(self, requests, desc=None):
        self.requests.extend(requests)
        return [Completion(text=self.answer(r), model="fake") for r in requests]


def test_prompt_steering_stores_one_instruction_per_concept(target, train_df):
    backend = _FakeBackend(lambda r: '"Always talk about it."')
    prompts = PromptSteering(backend=backend).fit(target, train_df, CONCEPTS, LAYER)
    assert len(backend.requests) == 2 and "the sea" in backend.requests[0].messages[0]["content"]
    assert prompts.prompts == {c.concept_id: "Always talk about it." for c in CONCEPTS} and prompts.llm == "fake"
    assert prompts.steers and prompts.detector is None and prompts.steerer().factor_free
    fallback = PromptSteering({"llm_prompts": "false"}).fit(target, train_df, CONCEPTS, LAYER)
    assert "Paris" in fallback.prompts[1] and fallback.llm is None
    with pytest.raises(MethodConfigError, match="needs an LLM"):
        PromptSteering().fit(target, train_df, CONCEPTS, LAYER)


def test_prompt_detection_rates_and_reports_parse_failures(target, train_df):
    backend = _FakeBackend(lambda r: "Rating: [[2]]" if "Paris" in r.messages[0]["content"] else "hmm")
    method = PromptDetection()
    rater = method.fit(target, train_df, CONCEPTS, LAYER)
    assert rater.detector == "target-model" and not rater.steers
    ratings = method.score_texts(backend, ["Paris", "the sea"], ["I love Paris.", "Waves."])
    assert ratings[0] == 2.0 and math.isnan(ratings[1])
    assert parse_rating("**Rating:** [[1]].") == 1.0 and math.isnan(parse_rating("Rating: [[7]]"))


def test_prompt_detection_with_the_target_model(target):
    from axmethods.chat_backend import TransformersChatBackend

    method = PromptDetection({"max_tokens": 4})
    ratings = method.score_texts(TransformersChatBackend(target), ["Paris"], ["I love Paris."])
    assert len(ratings) == 1  # a random tiny model rarely answers in format: NaN is a valid outcome


@pytest.mark.parametrize("method", ["diffmean", "reft-r1", "bow"])
def test_train_cli_writes_a_loadable_dictionary(tiny_llama_dir, train_df, tmp_path, method):
    import pyarrow as pa
    import typer
    from typer.testing import CliRunner

    from axdata.builders import write_concepts, write_split
    from axeval.cli.train import train
    from axmethods.results import load_result

    write_split(pa.Table.from_pandas(train_df, preserve_index=False), tmp_path / "data", "tiny", "train")
    write_concepts(CONCEPTS, tmp_path / "data", "tiny")
    app = typer.Typer()
    app.command()(train)
    app.command("other")(lambda: None)  # two commands: typer then dispatches by name
    result = CliRunner().invoke(app, ["train", method, "--data", str(tmp_path / "data"), "--model", str(tiny_llama_dir),
                                      "--layer", "1", "--out", str(tmp_path / "dict"), "--set", "num_train_epochs=1",
                                      "--set", "seed=7"] if method == "reft-r1" else
                                ["train", method, "--data", str(tmp_path / "data"), "--model", str(tiny_llama_dir),
                                 "--layer", "1", "--out", str(tmp_path / "dict"), "--set", "seed=7"])
    assert result.exit_code == 0, result.output
    loaded = load_result(tmp_path / "dict")
    assert loaded.method == method and loaded.n_concepts == 2 and loaded.config["seed"] == 7
    bad = CliRunner().invoke(app, ["train", method, "--data", str(tmp_path / "data"), "--model", str(tiny_llama_dir),
                                   "--layer", "1", "--out", str(tmp_path / "x"), "--set", "nope=1"])
    assert bad.exit_code == 2 and "no field" in bad.output


def test_joint_probe_row_matches_a_single_concept_run(target, train_df):
    config = ProbeConfig(num_train_epochs=12, per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=5e-2)
    joint = Probe(config).fit(target, train_df, CONCEPTS, LAYER).weight
    alone = Probe(config).fit(target, train_df, CONCEPTS[1:], LAYER).weight
    assert torch.nn.functional.cosine_similarity(joint[1], alone[0], dim=0) > 0.9


def test_probe_checkpoints_and_resumes_to_the_same_direction(target, train_df, tmp_path):
    """The one training engine is the Trainer's: checkpoints hold the [k, d] weight, a resumed run ends equal."""
    import shutil

    settings = {"num_train_epochs": 4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 5e-2, "max_length": 32,
                "output_dir": str(tmp_path), "save_strategy": "steps", "save_steps": 3}
    full = Probe(settings).fit(target, train_df, CONCEPTS, LAYER).weight
    folder = tmp_path / "concepts_from_0"
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-3", "checkpoint-6",
                                                                  "checkpoint-9"]
    for late in ("checkpoint-6", "checkpoint-9", "checkpoint-12"):
        shutil.rmtree(folder / late)
    method = Probe({**settings, "resume_from_checkpoint": True})
    resumed = method.fit(target, train_df, CONCEPTS, LAYER)
    assert len(method.loss_history) == 12 - 3  # only the steps after checkpoint-3 ran
    torch.testing.assert_close(resumed.weight, full, atol=1e-6, rtol=1e-5)
