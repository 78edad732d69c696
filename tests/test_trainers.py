"""RePS-family trainers on a tiny random model: objectives, gradients, frozen base, joint = per-concept training,
export → save → load → identical steering, peft export, the `axbench train` / `infer steer` CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from axdata.concepts import Concept
from axeval.cli import app
from axmethods.dictionary import SteeringDictionary
from axmethods.interventions import steer
from axmethods.models import load_target_model
from axmethods.registry import get_method
from axmethods.results import load_result
from axmethods.trainers import (
    ConceptAdapters,
    RePSConfig,
    parameterisations,
    preference_frame,
)
from axmethods.trainers.artifacts import export_peft
from axmethods.trainers.losses import dpo, per_concept_sum, scaled_simpo
from axmethods.trainers.reps_trainer import RePSTrainer, default_intervention_layers

LAYER = 1
CONCEPTS = [Concept(0, "the sea"), Concept(1, "Paris")]
SEA = ["The sea is wide and blue.", "Waves of the sea hit the shore.", "Sailing on the deep sea.",
       "The sea and the sky meet.", "Salt water of the sea.", "A calm sea at dawn."]
PARIS = ["Paris is the capital of France.", "The capital of France is Paris.", "I love Paris in spring.",
         "Paris, France, by the river.", "Walking in Paris at night.", "Paris has old bridges."]
OWN = ["Numbers 0 1 2 3.", "Hello world.", "A quick brown fox.", "The lazy dog sleeps.", "Apples and zebras.",
       "def add(a, b): return a + b"]


def preference_df() -> pd.DataFrame:
    rows = [{"input": f"Write sentence {i}.", "winning_output": text, "losing_output": OWN[i], "concept_id": cid}
            for cid, texts in ((0, SEA), (1, PARIS)) for i, text in enumerate(texts)]
    return pd.DataFrame(rows)


def train_df() -> pd.DataFrame:
    rows = [{"input": f"Write sentence {i}.", "output": text, "output_concept": name, "concept_genre": "text",
             "category": "positive", "dataset_category": "instruction", "concept_id": cid}
            for cid, name, texts in ((0, "the sea", SEA), (1, "Paris", PARIS)) for i, text in enumerate(texts)]
    rows += [{"input": "Say anything.", "output": text, "output_concept": "EEEEE", "concept_genre": "text",
              "category": "negative", "dataset_category": "instruction", "concept_id": -1} for text in OWN]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def target(tiny_llama_dir):
    return load_target_model(str(tiny_llama_dir), device="cpu", dtype="float32")


def config(**kw) -> RePSConfig:
    base = {"layer": LAYER, "num_train_epochs": 4, "per_device_train_batch_size": 3, "learning_rate": 0.05,
            "logging_steps": 1, "disable_tqdm": True, "training_factors": [1.0, 2.0, 4.0]}
    return RePSConfig(**{**base, **kw})


def _logged(trainer: RePSTrainer, key: str) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_objectives_match_their_formulas() -> None:
    pw, pl = torch.tensor([-12.0, -3.0]), torch.tensor([-8.0, -9.0])
    lw, ll = torch.tensor([4, 3]), torch.tensor([2, 3])
    rw, rl = torch.tensor([-20.0, -5.0]), torch.tensor([-10.0, -6.0])
    beta_w = torch.tensor([10.0, 1.0])  # max((rl − rw)·1, 1)
    expected = -torch.nn.functional.logsigmoid(beta_w * pw / lw - pl / ll)
    torch.testing.assert_close(scaled_simpo(pw, pl, lw, ll, rw, rl), expected)
    torch.testing.assert_close(dpo(pw, pl, rw, rl, beta=2.0),
                               -torch.nn.functional.logsigmoid(2.0 * ((pw - rw) - (pl - rl))))
    # Σ over concepts of each concept's mean: rows 0, 2 belong to concept 0, row 1 to concept 1.
    assert float(per_concept_sum(torch.tensor([1.0, 5.0, 3.0]), torch.tensor([0, 1, 0]), 3)) == 7.0


def test_reps_vector_learns_the_preference_and_only_the_intervention_trains(target) -> None:
    before = {name: p.detach().clone() for name, p in target.model.named_parameters()}
    seen: list[torch.Tensor] = []
    original = parameterisations.VectorIntervention.steered  # every hooked forward passes its plan here

    def spy(self, site, inputs, hidden, plan):
        seen.append(torch.stack([plan.factors.cpu(), (plan.subtract.cpu() if plan.subtract is not None
                                                      else torch.zeros(len(plan.factors), dtype=torch.bool)).float()]))
        return original(self, site, inputs, hidden, plan)

    # One log entry per epoch (2 steps), so each is an average over every pair.
    trainer = RePSTrainer(model=target, args=config(num_train_epochs=8, learning_rate=0.2, logging_steps=2),
                          train_dataset=preference_df(), concepts=CONCEPTS)
    initial = trainer.intervention.weight.detach().clone()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parameterisations.VectorIntervention, "steered", spy)
        trainer.train()
    losses, add, sub = _logged(trainer, "loss"), _logged(trainer, "margin/orig_add"), _logged(trainer, "margin/orig_sub")
    assert losses[-1] < losses[0]
    assert add[-1] > add[0] + 0.3 and sub[-1] > sub[0]  # chosen-vs-rejected margins grow for both pair kinds
    # Base model: no gradient, bitwise unchanged, and its requires_grad flags restored afterwards.
    for name, parameter in target.model.named_parameters():
        assert parameter.grad is None, name
        assert torch.equal(parameter, before[name]), name
        assert parameter.requires_grad
    assert trainer.intervention.weight.dtype == torch.float32
    assert not torch.equal(trainer.intervention.weight, initial)
    factors = torch.cat([s[0] for s in seen])
    subtract = torch.cat([s[1] for s in seen]).bool()
    assert set(factors[~subtract].tolist()) == {1.0, 2.0, 4.0}  # orig_add draws every training factor
    assert subtract.any() and (factors[subtract] == 0).all()  # orig_sub nulls the concept out


@pytest.mark.parametrize("preset", ["bipo", "lang-vector", "reps-lora", "reps-loreft", "lang-lora", "lang-loreft",
                                    "loreft"])
def test_every_preset_trains_and_lowers_its_loss(target, preset) -> None:
    method = get_method(preset)
    args = method.settings({"num_train_epochs": "6", "per_device_train_batch_size": "3", "gradient_accumulation_steps":
                          "1", "logging_steps": "1", "disable_tqdm": "true", "learning_rate": "0.02"}, layer=LAYER)
    trainer = RePSTrainer(model=target, args=args, train_dataset=preference_df(), concepts=CONCEPTS,
                          method_name=preset)
    trainer.train()
    losses = _logged(trainer, "loss")
    assert losses[-1] < losses[0], losses
    if args.parameterisation == "loreft":
        rotation = trainer.intervention.rotations()
        identity = torch.eye(rotation.shape[-1]).expand(*rotation.shape[:2], -1, -1)
        torch.testing.assert_close(rotation.transpose(-1, -2) @ rotation, identity, atol=1e-5, rtol=0)
    result = trainer.export()
    assert isinstance(result, SteeringDictionary if args.parameterisation == "vector" else ConceptAdapters)


def test_joint_training_equals_one_run_per_concept(target) -> None:
    args = {"loss_type": "dpo", "training_factors": [1.0], "subtraction_type": "negate", "train_bias": False,
            "num_train_epochs": 3, "seed": 7}
    joint = RePSTrainer(model=target, args=config(**args), train_dataset=preference_df(), concepts=CONCEPTS)
    joint.train()
    alone = RePSTrainer(model=target, args=config(**args), train_dataset=preference_df(), concepts=CONCEPTS[:1])
    alone.train()
    torch.testing.assert_close(joint.intervention.weight[:1], alone.intervention.weight, atol=1e-5, rtol=1e-4)


def test_a_datasets_dataset_trains_as_the_pandas_frame(target) -> None:
    import datasets

    runs = []
    for data in (preference_df(), datasets.Dataset.from_pandas(preference_df())):
        trainer = RePSTrainer(model=target, args=config(num_train_epochs=2), train_dataset=data, concepts=CONCEPTS)
        trainer.train()
        runs.append(trainer.intervention.weight.detach())
    assert torch.equal(runs[0], runs[1])


def _logits(target, text: str) -> torch.Tensor:
    ids = torch.tensor([target.encode(text)])
    with torch.no_grad():
        return target.model(input_ids=ids).logits


def test_vector_export_save_load_steers_identically(target, tmp_path: Path) -> None:
    trainer = RePSTrainer(model=target, args=config(num_train_epochs=2), train_dataset=preference_df(),
                          concepts=CONCEPTS)
    trainer.train()
    dictionary = trainer.export()
    assert dictionary.calibration.tolist() == [1.0, 1.0] and dictionary.calibration_info["source"] == "fixed"
    assert dictionary.config["steering_factors"][:3] == [2.0, 4.0, 6.0] and dictionary.config["trainer_name"] == "RePS"
    dictionary.save_pretrained(tmp_path / "reps")
    loaded = load_result(tmp_path / "reps")
    text = target.format_prompt("Tell me a story.")
    with steer(target, dictionary, [1], [8.0]):
        expected = _logits(target, text)
    with steer(target, loaded, [1], [8.0]):
        torch.testing.assert_close(_logits(target, text), expected, atol=0, rtol=0)
    # Steering = h + factor · w (the training-only bias is dropped), the trained intervention at b = 0.
    plan = parameterisations.RowPlan(torch.tensor([1]), torch.tensor([8.0]))
    with torch.no_grad():
        trainer.intervention.bias.zero_()
    with trainer.intervention.applied(target, plan):
        torch.testing.assert_close(_logits(target, text), expected, atol=1e-5, rtol=1e-5)
    card = (tmp_path / "reps" / "README.md").read_text()
    assert "reps" in card and "l1/weights.safetensors" in card
    assert "## Training" in card and "scaled_simpo" in card and "margin/orig_add:" in card


@pytest.mark.parametrize("preset", ["reps-lora", "reps-loreft"])
def test_adapters_save_load_steer_identically(target, tmp_path: Path, preset) -> None:
    args = get_method(preset).settings({"num_train_epochs": "2", "disable_tqdm": "true"})
    trainer = RePSTrainer(model=target, args=args, train_dataset=preference_df(), concepts=CONCEPTS,
                          method_name=preset)
    trainer.train()
    adapters = trainer.export()
    adapters.save_pretrained(tmp_path / preset)
    loaded = ConceptAdapters.load(tmp_path / preset)
    assert loaded.intervention.layers == default_intervention_layers(target.num_layers)
    text = target.format_prompt("Tell me a story.")
    with adapters.steer(target, [0], [1.5]):
        expected = _logits(target, text)
    with loaded.steer(target, [0], [1.5]):
        # LoReFT's rotation is re-derived through its orthogonal parametrisation on load: float error only.
        torch.testing.assert_close(_logits(target, text), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(_logits(target, text), expected)  # the adapter changes the model
    card = (tmp_path / preset / "README.md").read_text()
    assert "ConceptAdapters.from_pretrained" in card and preset in card


def test_lora_adapters_export_to_peft_with_the_same_outputs(target, tmp_path: Path) -> None:
    from peft import PeftModel

    args = get_method("reps-lora").settings({"num_train_epochs": "2", "disable_tqdm": "true",
                                                   "intervention_dropout": "0"})
    trainer = RePSTrainer(model=target, args=args, train_dataset=preference_df(), concepts=CONCEPTS,
                          method_name="reps-lora")
    trainer.train()
    adapters = trainer.export()
    folders = export_peft(adapters, tmp_path / "peft")
    assert [f.name for f in folders] == ["concept_0", "concept_1"]
    text = target.format_prompt("Tell me a story.")
    with adapters.steer(target, [1], [1.0]):
        ours = _logits(target, text)
    copy = load_target_model(str(target.spec), device="cpu", dtype="float32")
    peft_model = PeftModel.from_pretrained(copy.model, str(folders[1]))
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor([target.encode(text)])).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_preference_frame_pairs_positives_with_greedy_answers(target) -> None:
    frame = preference_frame(target, train_df(), CONCEPTS[:1], max_new_tokens=5, progress=False)
    assert len(frame) == len(SEA) and set(frame["concept_id"]) == {0}
    assert frame["winning_output"].tolist() == SEA
    assert frame["losing_output"].str.len().gt(0).all()
    again = preference_frame(target, train_df(), CONCEPTS[:1], max_new_tokens=5, progress=False)
    assert again["losing_output"].tolist() == frame["losing_output"].tolist()  # greedy: deterministic


def test_bad_settings_fail_with_the_fix(target) -> None:
    with pytest.raises(ValueError, match="loss_type"):
        config(loss_type="ipo")
    with pytest.raises(ValueError, match="null_it_out needs a vector"):
        config(parameterisation="lora")
    with pytest.raises(ValueError, match="layer is required"):
        RePSTrainer(model=target, args=RePSConfig(disable_tqdm=True), train_dataset=preference_df(),
                    concepts=CONCEPTS)
    with pytest.raises(ValueError, match="no preference pairs for concepts \\[5\\]"):
        RePSTrainer(model=target, args=config(), train_dataset=preference_df(), concepts=[Concept(5, "x")])
    with pytest.raises(ValueError, match="no field"):
        get_method("reps").settings({"lr": "0.1"})


def _dataset(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "cfg").mkdir(parents=True)
    train_df().to_parquet(data / "cfg" / "train-00000-of-00001.parquet")
    pd.DataFrame([{"concept_id": c.concept_id, "concept": c.concept} for c in CONCEPTS]).to_json(
        data / "cfg" / "concepts.jsonl", orient="records", lines=True)
    steering = pd.DataFrame([{"dataset_name": "AlpacaEval", "concept_id": c.concept_id, "input_concept": c.concept,
                              "input_id": p, "original_prompt": f"Question {p}?", "half": ["selection", "heldout"][p]}
                             for c in CONCEPTS for p in range(2)])
    steering.to_parquet(data / "cfg" / "steering-00000-of-00001.parquet")
    return data


def test_cli_trains_reps_and_lora_then_steers_with_their_own_factor_grids(tiny_llama_dir: Path,
                                                                          tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    runner = CliRunner()
    common = ["--data", str(data), "--model", str(tiny_llama_dir), "--layer", str(LAYER), "--device", "cpu",
              "--dtype", "float32", "--set", "num_train_epochs=1", "--set", "disable_tqdm=true"]
    result = runner.invoke(app, ["train", "reps", *common, "--out", str(tmp_path / "reps"),
                                 "--set", "training_factors=[1, 2]", "--set", "inference_factors=[1, 3]"])
    assert result.exit_code == 0, result.output
    assert "no preference split" in result.output
    result = runner.invoke(app, ["train", "lang-lora", *common, "--out", str(tmp_path / "lora")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lora" / "peft" / "concept_1" / "adapter_config.json").is_file()
    for name, n_factors in (("reps", 2), ("lora", 10)):
        out = tmp_path / f"{name}.parquet"
        result = runner.invoke(app, ["infer", "steer", "--result", str(tmp_path / name), "--data", str(data),
                                     "--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32",
                                     "--out", str(out), "--max-new-tokens", "3"])
        assert result.exit_code == 0, result.output
        generations = pd.read_parquet(out)
        assert len(generations) == 2 * 2 * n_factors
    assert sorted(pd.read_parquet(tmp_path / "reps.parquet")["factor"].unique()) == [1.0, 3.0]
    result = runner.invoke(app, ["train", "reps", *common, "--out", str(tmp_path / "x"), "--set", "loss_type=ipo"])
    assert result.exit_code == 2 and "loss_type" in result.output  # a bad setting is a usage error
    result = runner.invoke(app, ["train", "bipo", "--list-settings"])
    assert result.exit_code == 0 and "simpo_scaler" in result.output and "beta = 1.0" in result.output


def test_batched_reference_logps_equal_one_sequence_at_a_time(tiny_target) -> None:
    from axmethods.trainers.data import reference_logps, tokenize_pairs

    rows = tokenize_pairs(tiny_target, preference_df().head(5), CONCEPTS, max_prompt_length=64,
                          max_response_length=16)
    winning, losing = reference_logps(tiny_target, rows, batch_size=4, progress=False)
    for i in range(len(rows)):
        for response, value in ((rows.winning[i], winning[i]), (rows.losing[i], losing[i])):
            ids = torch.tensor([rows.prompt[i] + response])
            with torch.no_grad():
                logps = torch.log_softmax(tiny_target.model(input_ids=ids).logits[0, :-1].float(), -1)
            expected = logps[len(rows.prompt[i]) - 1:].gather(-1, ids[0, len(rows.prompt[i]):, None]).sum()
            torch.testing.assert_close(value, expected, atol=1e-4, rtol=1e-5)


def test_loreft_adapters_equal_pyvenes_rotated_space_intervention(target) -> None:
    from axmethods.pyvene_bridge import loreft_pyvene_model

    args = get_method("lang-loreft").settings({"num_train_epochs": "2", "disable_tqdm": "true",
                                                     "intervention_positions": "all", "intervention_dropout": "0"})
    trainer = RePSTrainer(model=target, args=args, train_dataset=preference_df(), concepts=CONCEPTS,
                          method_name="lang-loreft")
    trainer.train()
    adapters = trainer.export()
    ids = torch.tensor([target.encode(target.format_prompt("Tell me a story."))])
    with torch.no_grad(), adapters.steer(target, [1], [1.5]):
        ours = target.model(input_ids=ids).logits
    with torch.no_grad():
        pyvene_model = loreft_pyvene_model(adapters, target, concept_id=1, factor=1.5)
        theirs = pyvene_model(base={"input_ids": ids}, unit_locations=None)[1].logits
        plain = target.model(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)


def test_adapters_round_trip_through_the_hub_with_the_dictionary_cli(hub_env, target, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    args = get_method("reps-lora").settings({"num_train_epochs": "1", "disable_tqdm": "true"})
    trainer = RePSTrainer(model=target, args=args, train_dataset=preference_df(), concepts=CONCEPTS,
                          method_name="reps-lora")
    trainer.train()
    trainer.export().save_pretrained(tmp_path / "local")
    repo_id = hub_env.repo_id("reps-lora")
    runner = CliRunner()
    result = runner.invoke(app, ["dictionary", "push", str(tmp_path / "local"), repo_id, "--dataset", "me/c10"])
    assert result.exit_code == 0, result.output
    files = set(HfApi().list_repo_files(repo_id))
    assert {"README.md", "adapters.safetensors", "config.json", "concepts.jsonl",
            "peft/concept_0/adapter_model.safetensors"} <= files
    assert f'from_pretrained("{repo_id}")' in (Path(HfApi().hf_hub_download(repo_id, "README.md"))).read_text()
    result = runner.invoke(app, ["dictionary", "pull", repo_id, str(tmp_path / "pulled")])
    assert result.exit_code == 0, result.output
    local, pulled = ConceptAdapters.load(tmp_path / "local"), ConceptAdapters.from_pretrained(tmp_path / "pulled")
    text = target.format_prompt("Tell me a story.")
    with local.steer(target, [1], [2.0]):
        expected = _logits(target, text)
    with pulled.steer(target, [1], [2.0]):
        torch.testing.assert_close(_logits(target, text), expected, atol=0, rtol=0)


def test_preference_and_hypernetwork_trainers_refuse_a_distributed_launch(tiny_llama_target, monkeypatch):
    """Their objectives bypass the DDP-wrapped model (a torchrun launch of `axbench train reps` ended in an
    AttributeError); until that is routed through the forward they refuse with the fix, before training."""
    from axdata.errors import InputError
    from axmethods.trainers import concept_trainer
    from axmethods.trainers.hypersteer import HyperSteerConfig, HyperSteerTrainer
    from axmethods.trainers.reps_trainer import RePSTrainer

    monkeypatch.setattr(concept_trainer, "world_size", lambda: 2)
    with pytest.raises(InputError, match="RePS family .* cannot train under a distributed launcher"):
        RePSTrainer(tiny_llama_target, concepts=[])
    with pytest.raises(InputError, match="HyperSteer cannot train under a distributed launcher"):
        HyperSteerTrainer(tiny_llama_target, HyperSteerConfig(layer=1), pd.DataFrame(), [])
