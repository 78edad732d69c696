"""SAEs from SAELens folders (cfg.json + sae_weights.safetensors) as well as GemmaScope params files, and
sae-filtered: SAE features kept for steering by output score (Arad et al. 2025), steering and report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from axdata.concepts import Concept
from axeval.judge_templates import JUDGE_TEMPLATE_HASH
from axeval.report import ReportInputs, build_report
from axmethods.dictionary import SteeringDictionary
from axmethods.inference.steering import plan_rows
from axmethods.methods import MethodConfigError
from axmethods.methods.sae import SAE, JumpReLUSAE, SAEConfig, SAEFiltered, SAEFilteredConfig
from axmethods.models import load_target_model
from axmethods.output_score import output_scores, run_output_scores, sae_amplification

LAYER = 1
Z = 16
CONCEPTS = [Concept(0, "the sea", ref="https://www.neuronpedia.org/m/1-res/5", genres=("text",)),
            Concept(1, "Paris", ref="https://www.neuronpedia.org/m/1-res/7", genres=("text",))]


@pytest.fixture(scope="module")
def target(tiny_llama_dir):
    """The tiny Llama with a peaked unembedding (random init gives near-uniform next-token distributions)."""
    loaded = load_target_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    loaded.model.get_output_embeddings().weight.data *= 10
    return loaded


@pytest.fixture(scope="module")
def train_df():
    rows = [("Write.", f"The sea {i}.", "the sea", "text", "positive", 0) for i in range(3)]
    rows += [("Write.", f"Paris {i}.", "Paris", "text", "positive", 1) for i in range(3)]
    rows += [("Say.", f"Hello {i}.", "EEEEE", "text", "negative", -1) for i in range(3)]
    frame = pd.DataFrame(rows, columns=["input", "output", "output_concept", "concept_genre", "category", "concept_id"])
    return frame.assign(dataset_category="instruction")


def _params(d: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d, Z, generator=generator), "W_dec": torch.randn(Z, d, generator=generator),
            "b_enc": torch.randn(Z, generator=generator) * 0.1, "b_dec": torch.randn(d, generator=generator) * 0.1,
            "threshold": torch.rand(Z, generator=generator)}


def _saelens(folder, params, architecture="jumprelu", layer=LAYER, **cfg):
    folder.mkdir(parents=True, exist_ok=True)
    d = params["W_enc"].shape[0]
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": architecture, "d_in": d, "d_sae": Z, "hook_name": f"blocks.{layer}.hook_resid_post",
        "model_name": "tiny-llama", "apply_b_dec_to_input": False, "normalize_activations": "none", **cfg}))
    save_file({k: v.contiguous() for k, v in params.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def _gemmascope(path, params):
    np.savez(path, **{k: v.numpy() for k, v in params.items()})
    return path


def _fit(method, target, train_df, path, **settings):
    cls, config = (SAE, SAEConfig) if method == "sae" else (SAEFiltered, SAEFilteredConfig)
    return cls(config(sae_path=str(path), **settings)).fit(target, train_df, CONCEPTS, LAYER)


def _assert_same(a: SteeringDictionary, b: SteeringDictionary) -> None:
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)
    torch.testing.assert_close(a.steering_vectors, b.steering_vectors)
    assert a.config["jumprelu_threshold"] == b.config["jumprelu_threshold"]


def test_saelens_jumprelu_and_standard_folders_equal_the_gemmascope_file(target, train_df, tmp_path):
    params = _params(target.hidden_size)
    gemmascope = _fit("sae", target, train_df, _gemmascope(tmp_path / "params.npz", params))
    _assert_same(_fit("sae", target, train_df, _saelens(tmp_path / "jumprelu", params)), gemmascope)
    # Newer SAELens JumpReLU files store log_threshold.
    logged = {k: v for k, v in params.items() if k != "threshold"} | {"log_threshold": params["threshold"].log()}
    _assert_same(_fit("sae", target, train_df, _saelens(tmp_path / "log", logged)), gemmascope)
    # standard = ReLU: a GemmaScope file with threshold 0.
    relu = {k: v for k, v in params.items() if k != "threshold"}
    standard = _fit("sae", target, train_df, _saelens(tmp_path / "standard", relu, architecture="standard"))
    _assert_same(standard, _fit("sae", target, train_df, _gemmascope(tmp_path / "relu.npz",
                                                                     relu | {"threshold": torch.zeros(Z)})))
    # apply_b_dec_to_input: SAELens encodes x - b_dec; folded into the bias, the read-out is the same.
    folded = JumpReLUSAE.load(_saelens(tmp_path / "bdec", relu, architecture="standard", apply_b_dec_to_input=True))
    hidden = torch.randn(5, target.hidden_size)
    torch.testing.assert_close(folded.encode(hidden), torch.relu((hidden - params["b_dec"]) @ params["W_enc"]
                                                                 + params["b_enc"]))


@pytest.mark.parametrize(("change", "message"), [
    ({"architecture": "topk"}, r"architecture 'topk' is not supported; supported: jumprelu, standard"),
    ({"hook_name": "blocks.0.hook_resid_post"}, r"trained on layer 0 .* but the run uses layer 1"),
    ({"hook_name": "blocks.1.hook_mlp_out"}, r"not a residual-stream output"),
    ({"d_in": 99}, r"d_in 99 but the weights read width"),
    ({"normalize_activations": "expected_average_only_in"}, r"normalize_activations"),
])
def test_bad_saelens_folder_is_one_clear_error(target, train_df, tmp_path, change, message):
    folder = _saelens(tmp_path / "sae", _params(target.hidden_size), **change)
    with pytest.raises(MethodConfigError, match=message):
        _fit("sae", target, train_df, folder)


def test_folder_without_saelens_files_or_of_another_width_is_refused(target, train_df, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MethodConfigError, match=r"no cfg.json \+ sae_weights.safetensors"):
        _fit("sae", target, train_df, tmp_path / "empty")
    with pytest.raises(MethodConfigError, match="reads width 32"):
        _fit("sae", target, train_df, _saelens(tmp_path / "narrow", _params(32)))


def _filter_params(target) -> dict[str, torch.Tensor]:
    """Feature 5 writes a token's unembedding (an output feature), feature 7 writes nothing."""
    params = _params(target.hidden_size, seed=3)
    params["W_dec"][5] = target.model.get_output_embeddings().weight.detach()[42]
    params["W_dec"][7] = 0.0
    return params


def test_sae_filtered_keeps_exactly_the_features_at_or_above_threshold(target, train_df, tmp_path):
    params = _filter_params(target)
    folder = _saelens(tmp_path / "sae", params)
    filtered = _fit("sae-filtered", target, train_df, folder)
    sae = JumpReLUSAE.load(folder)
    expected = output_scores(target, LAYER, params["W_dec"][[5, 7]], sae_amplification(target, LAYER, sae.encode))
    torch.testing.assert_close(filtered.output_score, expected)
    assert expected[0] >= 0.01 > expected[1] == 0
    assert filtered.unsteered_concept_ids == (1,)
    assert (filtered.output_score_info["threshold"], filtered.output_score_info["kept"]) == (0.01, 1)
    _assert_same(filtered, _fit("sae", target, train_df, folder))  # detection and steering rows are SAE's
    # A threshold between the two scores, and one above both.
    middle = _fit("sae-filtered", target, train_df, folder, output_score_threshold=float(expected[0]))
    assert middle.unsteered_concept_ids == (1,)
    strict = _fit("sae-filtered", target, train_df, folder, output_score_threshold=float(expected[0]) + 1e-3)
    assert strict.unsteered_concept_ids == (0, 1)
    # Steering (every caller: run, infer steer, the Python API) skips the dropped concepts; SAE steers all.
    prompts = pd.DataFrame({"concept_id": [0, 0, 1, 1], "input_id": [0, 1, 0, 1], "input_concept": "c",
                            "original_prompt": ["a", "b", "a", "b"]})
    planned = plan_rows(prompts, filtered.steerer(), target, [1.0], seed=0)
    assert planned["concept_id"].tolist() == [0, 0]
    assert plan_rows(prompts, _fit("sae", target, train_df, folder).steerer(), target, [1.0], seed=0)[
        "concept_id"].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="steers none of the steering split's concepts"):
        plan_rows(prompts, strict.steerer(), target, [1.0], seed=0)
    # Stored with the dictionary, read back for the report.
    filtered.save_pretrained(tmp_path / "run" / "dictionaries" / "sae-filtered")
    loaded = SteeringDictionary.from_pretrained(tmp_path / "run" / "dictionaries" / "sae-filtered")
    torch.testing.assert_close(loaded.output_score, filtered.output_score)
    assert loaded.unsteered_concept_ids == (1,)
    frame = run_output_scores(tmp_path / "run" / "dictionaries")
    assert frame[["method", "concept_id", "steered"]].values.tolist() == [["sae-filtered", 0, True],
                                                                          ["sae-filtered", 1, False]]


def _judgements() -> pd.DataFrame:
    """sae steers concepts 0-1 well (2) and 2-3 badly (0); sae-filtered steered only 0-1."""
    rows = []
    for method, concepts in (("sae", range(4)), ("sae-filtered", range(2))):
        for concept_id in concepts:
            for prompt_id in range(4):
                rating = 2 if concept_id < 2 else 0
                rows.append((method, concept_id, prompt_id, "selection" if prompt_id < 2 else "heldout", 1.0,
                             rating, 2, 2))
    frame = pd.DataFrame(rows, columns=["method", "concept_id", "prompt_id", "half", "factor", "concept_rating",
                                        "instruction_rating", "fluency_rating"])
    return frame.assign(parse_status="ok", judge_model="gpt-4o-mini", judge_template_hash=JUDGE_TEMPLATE_HASH,
                        judge_temperature=0.0, judge_calls=3, judge_cost_usd=0.0)


def test_report_counts_the_kept_concepts_and_compares_sae_on_the_same_concepts(tmp_path):
    scores = pd.DataFrame({"method": "sae-filtered", "concept_id": [0, 1, 2, 3],
                           "output_score": [0.5, 0.2, 0.001, 0.0], "steered": [True, True, False, False]})
    report = build_report(ReportInputs(judgements=_judgements(), output_scores=scores), tmp_path)
    table = report.output_scores.set_index("Method")
    assert table.loc["sae-filtered", "Concepts"] == "2 of 4 steered"
    assert table.loc["sae-filtered", "Output score ≥ 0.01"] == "2 of 4"
    assert table.loc["sae on sae-filtered's kept concepts", "Steering (these concepts)"] == "2.000 (n=2)"
    assert table.loc["sae on sae-filtered's dropped concepts", "Steering (these concepts)"] == "0.000 (n=2)"
    markdown = (tmp_path / "report.md").read_text()
    assert "## SAE feature selection (output score)" in markdown
    assert "sae-filtered steers 2 of 4 concepts" in markdown and "were not generated" in markdown
    assert "SAE feature selection (output score)" in (tmp_path / "report.html").read_text()


def test_axbench_run_reports_sae_and_sae_filtered_side_by_side(tmp_path, tiny_llama_dir):
    """Both methods in one `axbench run`: the same features; sae-filtered steers only its output features, and
    the report counts them and shows SAE on the kept and dropped concepts."""
    from fixtures_runs import JudgingServer, write_run_config

    from axeval.config import AxbenchConfig
    from axeval.pipeline import run_pipeline
    from axeval.stages import default_stages

    plain = load_target_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    params = _params(plain.hidden_size, seed=3)
    params["W_dec"][5] = plain.model.get_output_embeddings().weight.detach()[42]
    params["W_dec"][7] = 0.0  # no output at all: score 0
    folder = _saelens(tmp_path / "sae", params)
    server = JudgingServer().start()
    try:
        path, run_dir = write_run_config(tmp_path, tiny_llama_dir, server)
        # Random-init logits are near uniform, so every score is small: a tiny threshold separates 5 from 7.
        settings = {"sae": {"sae_path": str(folder), "features": '{"0": 5, "1": 7}'},
                    "sae-filtered": {"sae_path": str(folder), "features": '{"0": 5, "1": 7}',
                                     "output_score_threshold": 0.0001}}
        config = AxbenchConfig.load(path, ["methods.train=[sae, sae-filtered]", "report.baseline=unsteered",
                                           f"methods.settings={json.dumps(settings)}"])
        run_pipeline(config, default_stages(config))
    finally:
        server.stop()
    steering = pd.read_parquet(run_dir / "inference" / "steering.parquet")
    assert set(steering.loc[steering["method"] == "sae-filtered", "concept_id"]) == {0}
    assert set(steering.loc[steering["method"] == "sae", "concept_id"]) == {0, 1}
    latent = pd.read_parquet(run_dir / "inference" / "latent.parquet")
    assert set(latent.loc[latent["method"] == "sae-filtered", "concept_id"]) == {0, 1}  # detection: every concept
    report = (run_dir / "eval" / "report.md").read_text()
    assert "sae-filtered steers 1 of 2 concepts" in report
    assert "| sae on sae-filtered's dropped concepts | 1 |" in report
