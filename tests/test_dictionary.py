"""Steering dictionaries: files, mismatch errors, the Hub round trip and the AxBench converter."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from axdata.concepts import Concept
from axeval.cli.dictionary import dictionary_app
from axmethods.convert import convert_axbench
from axmethods.dictionary import CONFIG_FILE, WEIGHTS_FILE, DictionaryError, SteeringDictionary


def make_dictionary(n: int = 4, d: int = 64, layer: int = 0, **kwargs) -> SteeringDictionary:
    generator = torch.Generator().manual_seed(layer)
    # Ids deliberately out of order: row i must stay concept i through every round trip.
    concepts = [Concept(cid, f"concept {cid}", genres=("text",)) for cid in [7, 2, 11, 5, 3, 9][:n]]
    return SteeringDictionary(weight=torch.randn(n, d, generator=generator), concepts=concepts, layer=layer,
                              hook_module=f"model.layers.{layer}", base_model="tiny/llama", method="DiffMean",
                              config={"lr": 0.01}, **kwargs)


def assert_same(a: SteeringDictionary, b: SteeringDictionary) -> None:
    assert torch.equal(a.weight, b.weight)
    assert a.concept_ids == b.concept_ids and [c.concept for c in a.concepts] == [c.concept for c in b.concepts]
    for name in ("bias", "calibration", "steering_weight"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name
    assert (a.layer, a.hook_module, a.base_model, a.method, a.config, a.activation, a.config_hash) == \
        (b.layer, b.hook_module, b.base_model, b.method, b.config, b.activation, b.config_hash)


def test_save_load_round_trip_keeps_rows_and_optional_tensors(tmp_path: Path) -> None:
    dictionary = make_dictionary(bias=torch.arange(4.0), calibration=torch.tensor([1.0, 2.0, 3.0, 4.0]),
                                 steering_weight=torch.ones(4, 64), activation="relu")
    folder = dictionary.save_pretrained(tmp_path, datasets=["me/concept10"], eval_results=[
        {"dataset": {"id": "me/concept10", "task_id": "concept_detection-c10", "revision": "a" * 40}, "value": 0.93,
         "notes": "mean AUROC over 10 concepts"}])
    assert folder == tmp_path / "l0"
    assert sorted(p.name for p in folder.iterdir()) == ["concepts.jsonl", "config.json", "weights.safetensors"]
    assert_same(dictionary, SteeringDictionary.load(tmp_path))
    assert_same(dictionary, SteeringDictionary.load(folder))  # the layer folder itself
    card = (tmp_path / "README.md").read_text()
    for expected in ("library_name: axbench", "base_model: tiny/llama", "me/concept10", "mean AUROC", "0.93",
                     "from_pretrained", "concept_detection-c10"):
        assert expected in card
    # The results: in the card's model-index (what the Hub shows) and as the repo's .eval_results file.
    import yaml
    from huggingface_hub import ModelCard

    index = ModelCard(card).data.eval_results
    assert [(r.dataset_type, r.task_name, r.metric_value, r.dataset_revision) for r in index] == \
        [("me/concept10", "concept_detection-c10", 0.93, "a" * 40)]
    # named by the tasks' dataset config, as `axbench eval push` names it: results on several configs sit side by side
    assert yaml.safe_load((tmp_path / ".eval_results" / "axbench-c10.yaml").read_text())[0]["value"] == 0.93
    assert not list(tmp_path.rglob("*.tmp"))
    # Every artefact gets the same (umask) permissions; safetensors alone used to come out 0600.
    assert len({path.stat().st_mode & 0o777 for path in tmp_path.rglob("*") if path.is_file()}) == 1


def test_several_layers_need_a_layer_choice(tmp_path: Path) -> None:
    make_dictionary(layer=0).save_pretrained(tmp_path)
    make_dictionary(layer=1).save_pretrained(tmp_path)
    with pytest.raises(DictionaryError, match="several layers"):
        SteeringDictionary.load(tmp_path)
    assert SteeringDictionary.load(tmp_path, layer=1).layer == 1
    with pytest.raises(DictionaryError, match="no layer-5 folder"):
        SteeringDictionary.load(tmp_path, layer=5)


def test_mismatched_files_give_clear_errors(tmp_path: Path) -> None:
    folder = make_dictionary().save_pretrained(tmp_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "hidden_size": 32}))
    with pytest.raises(DictionaryError, match="different dictionaries"):
        SteeringDictionary.load(folder)
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    lines = (folder / "concepts.jsonl").read_text().splitlines()
    (folder / "concepts.jsonl").write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(DictionaryError, match="4 weight rows but 3 concepts"):
        SteeringDictionary.load(folder)


def test_reordered_concepts_file_is_caught_not_mislabelled(tmp_path: Path) -> None:
    folder = make_dictionary().save_pretrained(tmp_path)
    lines = (folder / "concepts.jsonl").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]  # every row still has a concept, but the wrong one
    (folder / "concepts.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DictionaryError, match=r"lists concept ids \[2, 7, 11, 5\].*belong to \[7, 2, 11, 5\]"):
        SteeringDictionary.load(folder)


def test_concepts_file_without_ids_is_refused_with_the_fix(tmp_path: Path) -> None:
    folder = make_dictionary().save_pretrained(tmp_path)
    lines = [json.loads(line) for line in (folder / "concepts.jsonl").read_text().splitlines()]
    (folder / "concepts.jsonl").write_text("".join(json.dumps({k: v for k, v in line.items() if k != "concept_id"})
                                                   + "\n" for line in lines))
    with pytest.raises(DictionaryError, match="every line needs a concept_id"):
        SteeringDictionary.load(folder)


def test_non_finite_weights_are_refused_naming_the_concepts() -> None:
    weight = torch.randn(4, 64)
    weight[2, 5] = float("nan")
    with pytest.raises(DictionaryError, match=r"weight holds NaN or infinite values in the rows of concepts \[11\]"):
        make_dictionary().__class__(weight=weight, concepts=make_dictionary().concepts, layer=0, hook_module="m",
                                    base_model="b", method="DiffMean")


def test_weights_that_are_not_safetensors_are_refused_without_unpickling(tmp_path: Path) -> None:
    folder = make_dictionary().save_pretrained(tmp_path)
    torch.save({"weight": torch.zeros(4, 64)}, folder / WEIGHTS_FILE)  # a pickle under the safetensors name
    with pytest.raises(DictionaryError, match="not a readable safetensors file"):
        SteeringDictionary.load(folder)


def test_model_mismatch_names_the_problem(tmp_path: Path, tiny_llama_target) -> None:
    make_dictionary(d=32).save_pretrained(tmp_path / "narrow")
    with pytest.raises(DictionaryError, match="hidden size 32"):
        SteeringDictionary.load(tmp_path / "narrow", expect_model=tiny_llama_target)
    make_dictionary(layer=5).save_pretrained(tmp_path / "deep")
    with pytest.raises(DictionaryError, match="reads layer 5"):
        SteeringDictionary.load(tmp_path / "deep", expect_model=tiny_llama_target)
    assert SteeringDictionary.load(tmp_path / "deep").layer == 5  # fine without a model to check against


def test_uncalibrated_dictionary_refuses_to_steer() -> None:
    with pytest.raises(DictionaryError, match="no calibration"):
        make_dictionary().steering_magnitudes([7], [1.0])


def test_push_and_pull_through_the_hub_standin(hub_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import HfApi

    repo_id = hub_env.repo_id("diffmean")
    first = make_dictionary(layer=0, calibration=torch.ones(4))
    second = make_dictionary(layer=1)
    first.push_to_hub(repo_id, datasets=["me/concept10"])
    second.push_to_hub(repo_id)
    files = set(HfApi().list_repo_files(repo_id))
    assert {"README.md", "l0/weights.safetensors", "l0/concepts.jsonl", "l0/config.json",
            "l1/weights.safetensors"} <= files
    assert_same(first, SteeringDictionary.from_pretrained(repo_id, layer=0))
    assert_same(second, SteeringDictionary.from_pretrained(repo_id, layer=1))

    # Other files in the repo (a training checkpoint) are not the dictionary's: `pull` never downloads them.
    HfApi().upload_file(path_or_fileobj=b"x" * 4096, path_in_repo="checkpoints/optimizer.pt", repo_id=repo_id)
    downloaded: list[str] = []
    real = huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        folder = real(*args, **kwargs)
        downloaded.extend(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
        return folder

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    result = CliRunner().invoke(dictionary_app, ["pull", repo_id, str(tmp_path / "pulled"), "--layer", "0"])
    assert result.exit_code == 0, result.output
    assert "l0/weights.safetensors" in downloaded and not any(name.endswith(".pt") for name in downloaded)
    assert_same(first, SteeringDictionary.load(tmp_path / "pulled"))
    result = CliRunner().invoke(dictionary_app, ["push", str(tmp_path / "pulled"), hub_env.repo_id("copy")])
    assert result.exit_code == 0, result.output


def _axbench_folder(root: Path, weight: torch.Tensor, n: int, bias: torch.Tensor | None = None) -> Path:
    folder = root / "l20"
    folder.mkdir(parents=True)
    torch.save(weight, folder / "weight.pt")
    if bias is not None:
        torch.save(bias, folder / "bias.pt")
    lines = [json.dumps({"concept_id": i, "concept": f"concept {i}", "ref": f"https://np/{i}",
                         "concept_genres_map": {f"concept {i}": ["text"]}}) for i in range(n)]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("transposed", [False, True])
def test_convert_axbench_handles_both_orientations(tmp_path: Path, transposed: bool) -> None:
    weight = torch.randn(5, 64).to(torch.bfloat16)
    folder = _axbench_folder(tmp_path, weight.T.clone() if transposed else weight, 5, bias=torch.arange(5.0))
    (tmp_path / "table.json").write_text(json.dumps({"thresholds": {}, "max_act": {str(i): 10.0 + i for i in range(5)}}))
    dictionary = convert_axbench(folder, method="ReFT-r1", base_model="google/gemma-2-2b-it", activation="relu",
                                 calibration_file=tmp_path / "table.json")
    assert dictionary.layer == 20 and dictionary.hook_module == "model.layers.20"
    assert torch.equal(dictionary.weight, weight.float())
    assert torch.equal(dictionary.bias, torch.arange(5.0))
    assert dictionary.calibration.tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert dictionary.concepts[3].ref == "https://np/3"


def test_convert_axbench_errors(tmp_path: Path) -> None:
    square = _axbench_folder(tmp_path / "square", torch.randn(4, 4), 4)
    with pytest.raises(DictionaryError, match="ambiguous"):
        convert_axbench(square, method="DiffMean", base_model="m")
    assert convert_axbench(square, method="DiffMean", base_model="m", hidden_size=4).n_concepts == 4
    wrong = _axbench_folder(tmp_path / "wrong", torch.randn(3, 64), 5)
    with pytest.raises(DictionaryError, match="do not belong together"):
        convert_axbench(wrong, method="DiffMean", base_model="m")
    pickled = _axbench_folder(tmp_path / "pickled", torch.randn(5, 64), 5)
    torch.save({"weight": torch.randn(5, 64), "note": Path("x")}, pickled / "weight.pt")
    with pytest.raises(DictionaryError, match="objects other than tensors"):
        convert_axbench(pickled, method="DiffMean", base_model="m")


def test_convert_axbench_cli(tmp_path: Path) -> None:
    folder = _axbench_folder(tmp_path / "src", torch.randn(3, 64), 3)
    result = CliRunner().invoke(dictionary_app, ["convert-axbench", str(folder), str(tmp_path / "out"),
                                                 "--method", "DiffMean", "--base-model", "tiny/llama"])
    assert result.exit_code == 0, result.output
    converted = SteeringDictionary.load(tmp_path / "out")
    assert converted.n_concepts == 3 and converted.layer == 20


def test_push_refuses_an_uncalibrated_steering_dictionary(tmp_path: Path) -> None:
    """Nobody can steer with a dictionary that has no calibration: pushing one is refused (before any upload)
    unless --allow-uncalibrated says it is on purpose."""
    make_dictionary().save_pretrained(tmp_path / "dict")
    result = CliRunner().invoke(dictionary_app, ["push", str(tmp_path / "dict"), "me/uncalibrated"])
    assert result.exit_code == 1
    assert "Push refused" in result.output and "axbench infer latent --result" in result.output
    assert "--allow-uncalibrated" in result.output


@pytest.mark.parametrize("legacy", [{"detector": "text"}, {"detector": "none", "steering": "prompt"},
                                    {"detector": "target-model", "steering": "none"}])
def test_a_baseline_saved_in_the_old_dictionary_layout_is_refused(tmp_path: Path, legacy: dict) -> None:
    # BoW and the prompt baselines were dictionaries routed by config strings before they had their own classes.
    dataclasses.replace(make_dictionary(), config=legacy).save_pretrained(tmp_path)
    with pytest.raises(DictionaryError, match="old dictionary layout; retrain it"):
        SteeringDictionary.load(tmp_path)
