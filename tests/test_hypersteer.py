"""HyperSteer (spec §3.14): the hypernetwork, its training on the Trainer, its result and the CLI, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from fixtures_runs import write_run_config
from test_builders import make_dataset
from typer.testing import CliRunner

from axdata.concepts import Concept
from axeval.cli import app
from axmethods.factors import HYPERSTEER_FACTORS
from axmethods.methods.hypernet import HypernetShape, build_hypernetwork
from axmethods.methods.hypersteer import HyperSteerResult
from axmethods.results import load_result
from axmethods.trainers.hypersteer import HyperSteerConfig, HyperSteerTrainer, deltas, train_hypersteer

CONCEPTS = [Concept(0, "the ocean and sea creatures"), Concept(1, "cooking recipes"), Concept(2, "space travel")]


def _frame(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"input": [f"Tell me about thing {i}." for i in range(n)],
                         "winning_output": [("Fish swim in the deep blue sea.", "Stir the soup slowly.",
                                             "Rockets fly to the moon.")[i % 3] for i in range(n)],
                         "losing_output": ["I do not know." for _ in range(n)], "concept_id": [i % 3 for i in range(n)]})


def _config(**changes) -> HyperSteerConfig:
    values = {"layer": 1, "max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
              "disable_tqdm": True, "logging_steps": 100, **changes}
    return HyperSteerConfig(**values)


def test_network_shapes_and_init_copied_from_the_target(tiny_target) -> None:
    network = build_hypernetwork(tiny_target.model, tiny_target.decoder_layers(), 1, 2)
    shape = network.shape
    assert shape.hidden_size == tiny_target.hidden_size and len(network.blocks) == 2
    for block, source in zip(network.blocks, tiny_target.decoder_layers()):
        for name, tensor in source.self_attn.state_dict().items():
            assert torch.equal(block.self_attn.state_dict()[name], tensor)
            assert torch.equal(block.cross_attn.state_dict()[name], tensor)  # cross-attention starts as a copy
        assert torch.equal(block.mlp.down_proj.weight, source.mlp.down_proj.weight)
        assert torch.equal(block.input_norm.weight, source.input_layernorm.weight)
    assert network.embed.weight.data_ptr() == tiny_target.model.get_input_embeddings().weight.data_ptr()
    assert "embed.weight" not in network.trained_state()
    tokens = [tiny_target.tokenizer(c.concept)["input_ids"] for c in CONCEPTS]
    prompts = [tiny_target.encode(tiny_target.format_prompt(p)) for p in ("Hi there.", "Write a poem about it", "x")]
    delta = deltas(network, tiny_target, 1, tokens, prompts)
    assert delta.shape == (3, tiny_target.hidden_size) and torch.isfinite(delta).all()
    again = deltas(network, tiny_target, 1, [tokens[0]] * 3, prompts)  # Δ depends on the concept text
    assert not torch.allclose(delta[1], again[1]) and torch.allclose(delta[0], again[0], atol=1e-5)


def test_gemma2_shape_uses_its_attention_and_norm_conventions(tiny_gemma2_dir: Path) -> None:
    from transformers import AutoConfig

    shape = HypernetShape.from_config(AutoConfig.from_pretrained(tiny_gemma2_dir), 2)
    assert shape.sandwich_norms and shape.softcap and shape.embed_scale == shape.hidden_size ** 0.5
    with pytest.raises(ValueError, match="num_hidden_layers must be 1..2"):
        HypernetShape.from_config(AutoConfig.from_pretrained(tiny_gemma2_dir), 3)


@pytest.mark.parametrize("objective", ["lm", "reps"])
def test_training_lowers_the_loss_and_never_sees_held_out_concepts(tiny_llama_target, objective: str) -> None:
    frame = _frame(24)
    trainer = HyperSteerTrainer(tiny_llama_target, _config(objective=objective, max_steps=8, held_out_concepts=[2],
                                                           learning_rate=3e-3), frame, CONCEPTS)
    assert [c.concept_id for c in trainer.concepts] == [0, 1] and [c.concept_id for c in trainer.held_out] == [2]
    assert 2 not in trainer.train_dataset["concept_index"] and len(trainer.train_dataset) == 16
    assert all("thing 2." not in p for p in trainer.reference_prompts)  # held-out prompts are gone too
    before = [p.detach().clone() for p in tiny_llama_target.model.parameters()]
    trainer.train()
    history = trainer.loss_history
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_llama_target.model.parameters()))  # target frozen
    result = trainer.export()
    assert result.held_out == [CONCEPTS[2]] and result.concept_ids == [0, 1]
    assert result.steering_factors == HYPERSTEER_FACTORS == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8]


def test_result_round_trip_and_any_concept_list_becomes_a_dictionary(tiny_llama_target, tmp_path: Path) -> None:
    result = train_hypersteer(tiny_llama_target, lambda split: None if split != "preference" else _frame(),
                              CONCEPTS, _config(objective="reps", held_out_concepts=[1]))
    assert isinstance(result, HyperSteerResult)
    result.save_pretrained(tmp_path / "net")
    loaded = load_result(tmp_path / "net")
    assert isinstance(loaded, HyperSteerResult) and loaded.held_out == result.held_out
    assert loaded.layer == 1 and loaded.num_hidden_layers == 2 and loaded.base_model == result.base_model
    assert loaded.state.keys() == result.state.keys()
    assert all(torch.equal(loaded.state[k], result.state[k]) for k in result.state)
    card = (tmp_path / "net" / "README.md").read_text()
    assert "HyperSteer" in card and "held out | 1 concepts (1)" in card
    unseen = [Concept(7, "medieval castles"), Concept(8, "jazz music")]
    dictionary = loaded.to_dictionary(unseen, tiny_llama_target)
    assert dictionary.weight.shape == (2, tiny_llama_target.hidden_size) and dictionary.concept_ids == [7, 8]
    assert torch.allclose(dictionary.weight, result.to_dictionary(unseen, tiny_llama_target).weight, atol=1e-5)
    assert dictionary.steering_factors == HYPERSTEER_FACTORS and dictionary.calibration_fixed
    # the prompt-conditioned steerer gives each row its own Δ
    rows = pd.DataFrame({"concept": ["jazz music"] * 2, "factor": [1.0, 1.0],
                         "prompt": [tiny_llama_target.format_prompt(p) for p in ("Hi.", "Write a long story.")]})
    steerer = loaded.steerer()
    context, magnitudes = steerer.intervene(tiny_llama_target, rows)
    assert steerer.factors == HYPERSTEER_FACTORS and magnitudes.tolist() == [1.0, 1.0]
    ids = torch.tensor([tiny_llama_target.encode(rows["prompt"][0])] * 2)
    plain = tiny_llama_target.model(input_ids=ids).logits
    with context:
        steered = tiny_llama_target.model(input_ids=ids).logits
    assert not torch.allclose(plain, steered)
    delta = loaded.deltas(tiny_llama_target, rows["concept"].tolist(), rows["prompt"].tolist())
    assert not torch.allclose(delta[0], delta[1])


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_cli_train_from_hypernet_and_infer_steer(tiny_llama_dir: Path, tmp_path: Path) -> None:
    assert "hypersteer" in _cli("train", "--help").output
    data = make_dataset(tmp_path / "data", {"tiny": True}, n=12)
    net = tmp_path / "net"
    trained = _cli("train", "hypersteer", "--data", str(data), "--model", str(tiny_llama_dir), "--layer", "1",
                   "--out", str(net), "--set", "max_steps=2", "--set", "held_out_concepts=[1]", "--device", "cpu")
    assert trained.exit_code == 0, trained.output
    record = json.loads((net / "config.json").read_text())
    assert record["format"] == "axbench-hypernetwork" and [c["concept_id"] for c in record["held_out_concepts"]] == [1]
    listed = tmp_path / "concepts.txt"
    listed.write_text("volcanoes\nold maps\nthe colour green\n")
    metadata = tmp_path / "metadata.jsonl"
    metadata.write_text("".join(json.dumps({"concept_id": i, "concept": c, "ref": None}) + "\n"
                                for i, c in ((0, "dogs of every breed"), (1, "numbers divisible only by one"))))
    for concepts, n in ((listed, 3), (metadata, 2)):
        out = tmp_path / f"dict-{n}"
        made = _cli("dictionary", "from-hypernet", str(net), "--concepts", str(concepts), "--out", str(out),
                    "--model", str(tiny_llama_dir), "--device", "cpu")
        assert made.exit_code == 0, made.output
        dictionary = load_result(out)
        assert dictionary.weight.shape == (n, 64) and dictionary.layer == 1
    steered = _cli("infer", "steer", "--result", str(tmp_path / "dict-2"), "--data", str(data), "--model",
                   str(tiny_llama_dir), "--max-new-tokens", "2", "--out", str(tmp_path / "steer.parquet"),
                   "--device", "cpu")
    assert steered.exit_code == 0, steered.output
    generated = pd.read_parquet(tmp_path / "steer.parquet")
    assert sorted(generated["factor"].unique()) == HYPERSTEER_FACTORS  # the dictionary's own grid
    (tmp_path / "empty.txt").write_text("")
    empty = _cli("dictionary", "from-hypernet", str(net), "--concepts", str(tmp_path / "empty.txt"), "--out",
                 str(tmp_path / "o"), "--model", str(tiny_llama_dir), "--device", "cpu")
    assert empty.exit_code == 2 and "the file is empty" in empty.output and "Traceback" not in empty.output


def test_from_hypernet_user_errors_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    missing = _cli("dictionary", "from-hypernet", str(tmp_path / "nope"), "--concepts", str(tmp_path / "empty.txt"),
                   "--out", str(tmp_path / "o"))
    assert missing.exit_code == 2 and "no such folder" in missing.output and "Traceback" not in missing.output
    (tmp_path / "notnet").mkdir()
    wrong = _cli("dictionary", "from-hypernet", str(tmp_path / "notnet"), "--concepts", str(tmp_path / "empty.txt"),
                 "--out", str(tmp_path / "o"))
    assert wrong.exit_code == 2 and "not a hypernetwork folder" in wrong.output


def test_axbench_run_trains_once_and_reports_held_out_concepts(tmp_path: Path, tiny_llama_dir: Path,
                                                               judging_llm) -> None:
    from axeval.config import AxbenchConfig
    from axeval.pipeline import run_pipeline
    from axeval.stages import default_stages

    path, _ = write_run_config(tmp_path, tiny_llama_dir, judging_llm)
    settings = {"hypersteer": {"max_steps": 2, "held_out_concepts": [1], "disable_tqdm": True}}
    config = AxbenchConfig.load(path, ["methods.train=[diffmean, hypersteer]", "report.baseline=unsteered",
                                       f"methods.settings={json.dumps(settings)}"])
    result = run_pipeline(config, default_stages(config))
    assert result.stages[-1].name == "report"
    root = tmp_path / "runs" / "r"
    assert isinstance(load_result(root / "dictionaries" / "hypersteer"), HyperSteerResult)
    steering = pd.read_parquet(root / "inference" / "steering.parquet")
    steered = steering[steering["method"] == "hypersteer"]
    assert sorted(steered["factor"].unique()) == HYPERSTEER_FACTORS and set(steered["concept_id"]) == {0, 1}
    report = (root / "eval" / "report.md").read_text()
    assert "Seen vs held-out concepts" in report and "held out" in report
