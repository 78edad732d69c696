"""AxBench's finetuning baselines on TRL's SFTTrainer: LoRA-SFT → ConceptAdapters, full SFT → FinetunedConcepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from axdata.concepts import Concept
from axmethods.inference.sampling import SamplingConfig, sample
from axmethods.inference.steering import plan_batches, run_steering
from axmethods.models import TargetModel
from axmethods.registry import get_method
from axmethods.results import load_result
from axmethods.trainers.artifacts import ConceptAdapters, export_peft
from axmethods.trainers.finetuned import FinetunedConcepts, FinetunedSteerer, swapped_weights
from axmethods.trainers.sft import SFTDataError, SFTSteeringConfig, concept_dataset, train_sft

CONCEPTS = [Concept(3, "the sea"), Concept(7, "apples")]
RESPONSES = {3: "The sea and the sky.", 7: "apple zebra apple hello apple"}
INSTRUCTIONS = ["Write a short poem.", "What is the capital of France?", "Explain photosynthesis.",
                "hello world", "Numbers 0 1 2 3"]


def train_frame() -> pd.DataFrame:
    """Five positives per concept and one negative each (SFT must skip negatives)."""
    rows = [{"input": text, "output": RESPONSES[c.concept_id], "category": "positive", "concept_id": c.concept_id}
            for c in CONCEPTS for text in INSTRUCTIONS]
    rows += [{"input": "The quick brown fox.", "output": "def add(a, b):", "category": "negative",
              "concept_id": c.concept_id} for c in CONCEPTS]
    return pd.DataFrame(rows)


def quick_config(tmp_path: Path, *, peft: bool, **overrides) -> SFTSteeringConfig:
    values = {"peft": peft, "output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 5,
              "gradient_accumulation_steps": 1, "num_train_epochs": 3.0, "learning_rate": 1e-2 if peft else 1e-3,
              "logging_steps": 1, "seed": 0, "disable_tqdm": True, **overrides}
    return SFTSteeringConfig(**values)


def snapshot(target: TargetModel) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in target.model.state_dict().items()}


def assert_bitwise_equal(before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def response_nll(target: TargetModel, concept_id: int) -> float:
    """Mean cross-entropy of the concept's responses (what SFT minimises), under whatever hooks are installed."""
    dataset = concept_dataset(target, train_frame(), concept_id)
    losses = []
    with torch.no_grad():
        for ids, mask in zip(dataset["input_ids"], dataset["completion_mask"]):
            logits = target.model(torch.tensor([ids])).logits[0, :-1]
            labels = torch.tensor(ids[1:]).masked_fill(torch.tensor(mask[1:]) == 0, -100)
            losses.append(torch.nn.functional.cross_entropy(logits, labels).item())
    return sum(losses) / len(losses)


def test_config_defaults_follow_the_paper_per_kind() -> None:
    lora, full = SFTSteeringConfig(), SFTSteeringConfig(peft=False)
    assert (lora.learning_rate, lora.per_device_train_batch_size, lora.gradient_accumulation_steps,
            lora.num_train_epochs) == (9e-4, 18, 2, 24.0)
    assert (full.learning_rate, full.per_device_train_batch_size, full.gradient_accumulation_steps,
            full.num_train_epochs) == (4e-5, 18, 4, 8.0)
    assert (lora.lora_rank, lora.lora_alpha, lora.use_rslora, lora.lora_dropout) == (4, 32.0, True, 0.05)
    assert not lora.gradient_checkpointing and lora.bf16 == torch.cuda.is_available()
    assert lora.report_to == [] and lora.completion_only_loss
    # The registry presets land on the same values, and overrides still win.
    preset = get_method("sft").settings({"num_train_epochs": "2"})
    assert (preset.peft, preset.learning_rate, preset.num_train_epochs) == (False, 4e-5, 2.0)
    assert get_method("lora").settings().learning_rate == 9e-4


def test_concept_dataset_is_prompt_plus_raw_response_without_eos(tiny_llama_target) -> None:
    target = tiny_llama_target
    dataset = concept_dataset(target, train_frame(), 7)
    assert len(dataset) == len(INSTRUCTIONS)  # positives only
    prompt = target.encode(target.format_prompt(INSTRUCTIONS[0]))
    response = target.encode(RESPONSES[7])
    assert dataset[0]["input_ids"] == prompt + response
    assert dataset[0]["completion_mask"] == [0] * len(prompt) + [1] * len(response)
    assert dataset[0]["input_ids"][-1] != target.tokenizer.eos_token_id


def test_missing_columns_and_concepts_without_positives_are_named(tiny_llama_target, tmp_path: Path) -> None:
    config = quick_config(tmp_path, peft=True)
    with pytest.raises(SFTDataError, match="lacks columns \\['category'\\]"):
        train_sft(tiny_llama_target, train_frame().drop(columns="category"), CONCEPTS, config, method="lora")
    with pytest.raises(SFTDataError, match="concepts \\[99\\] have no positive rows"):
        train_sft(tiny_llama_target, train_frame(), [Concept(99, "x")], config, method="lora")


@pytest.fixture
def lora_run(tiny_llama_target, tmp_path: Path) -> tuple[TargetModel, ConceptAdapters, dict[str, torch.Tensor]]:
    target = tiny_llama_target
    before = snapshot(target)
    adapters = train_sft(target, train_frame(), CONCEPTS, quick_config(tmp_path, peft=True), method="lora")
    return target, adapters, before


def test_lora_sft_lowers_the_response_loss_and_leaves_the_base_model_bitwise(lora_run) -> None:
    target, adapters, before = lora_run
    assert_bitwise_equal(before, target.model)
    assert all(p.requires_grad for p in target.model.parameters()) and not target.model.training
    assert type(target.residual_module(0).self_attn.o_proj) is torch.nn.Linear  # peft unwrapped
    assert adapters.method == "lora" and adapters.concept_ids == [3, 7]
    spec = adapters.intervention.spec()
    assert (spec["rank"], spec["alpha"], spec["rslora"], spec["layers"]) == (4, 32.0, True, [0, 1])
    assert adapters.config["loss_type"] == "sft" and adapters.steering_factors == [1.0]
    for index, concept in enumerate(CONCEPTS):
        assert adapters.intervention.lora_B[index].abs().sum() > 0  # trained away from peft's zero init
        base = response_nll(target, concept.concept_id)
        with adapters.steer(target, [concept.concept_id], [1.0]):
            steered = response_nll(target, concept.concept_id)
        assert steered < base - 0.5, (concept, base, steered)


def test_stacked_lora_equals_the_peft_adapter_it_was_read_from(lora_run, tiny_llama_dir: Path,
                                                               tmp_path: Path) -> None:
    from peft import PeftModel

    target, adapters, _ = lora_run
    folders = export_peft(adapters, tmp_path / "peft")
    ids = torch.tensor([target.encode(target.format_prompt("Write a short poem.") + "The sea")])
    for concept, folder in zip(adapters.concepts, folders):
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
        with torch.no_grad():
            expected = peft_model(ids).logits
            with adapters.steer(target, [concept.concept_id], [1.0]):
                ours = target.model(ids).logits
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
        assert not torch.allclose(expected, target.model(ids).logits.detach(), atol=1e-3)  # the adapter matters


def greedy(target: TargetModel, prompt: str) -> list[int]:
    return sample(target, [target.encode(target.format_prompt(prompt))], [0],
                  SamplingConfig(max_new_tokens=8, temperature=0))[0]


def test_full_sft_saves_loads_and_steers_with_each_concepts_weights(tiny_llama_target, tiny_llama_dir: Path,
                                                                    tmp_path: Path) -> None:
    target = tiny_llama_target
    before = snapshot(target)
    trained = train_sft(target, train_frame(), CONCEPTS, quick_config(tmp_path, peft=False, num_train_epochs=2.0),
                        method="sft")
    assert_bitwise_equal(before, target.model)
    assert all(p.requires_grad for p in target.model.parameters()) and not target.model.training
    assert isinstance(trained, FinetunedConcepts) and trained.config["train_loss"]["3"] is not None

    root = trained.save_pretrained(tmp_path / "sft")
    assert {p.name for p in root.iterdir()} == {"config.json", "concepts.jsonl", "README.md", "concept_3", "concept_7"}
    assert "sft fine-tuned concepts" in (root / "README.md").read_text()
    loaded = load_result(root)
    assert isinstance(loaded, FinetunedConcepts) and loaded.concept_ids == [3, 7] and loaded.method == "sft"
    weights = load_file(str(root / "concept_7" / "model.safetensors"))
    assert "model.embed_tokens.weight" in weights and "lm_head.weight" not in weights  # tied: stored once

    by_hand = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    by_hand.load_state_dict(weights, strict=False)
    hand_target = dataclasses.replace(target, model=by_hand)
    rows = pd.DataFrame({"concept_id": [7], "factor": [float("nan")]})
    context, magnitudes = loaded.steerer().intervene(target, rows)
    unsteered = greedy(target, "Write a short poem.")
    with context:
        steered = greedy(target, "Write a short poem.")
    assert steered == greedy(hand_target, "Write a short poem.") and steered != unsteered
    assert magnitudes.shape == (1,) and pd.isna(magnitudes[0])
    assert_bitwise_equal(before, target.model)


def test_swapped_weights_restore_the_base_on_errors_and_reject_foreign_tensors(tiny_llama_target) -> None:
    target = tiny_llama_target
    before = snapshot(target)
    name = "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(RuntimeError, match="boom"), swapped_weights(target.model, {name: torch.zeros_like(before[name])}):
        assert target.model.get_parameter(name).abs().sum() == 0
        raise RuntimeError("boom")
    assert_bitwise_equal(before, target.model)
    with pytest.raises(Exception, match="another architecture"), swapped_weights(target.model, {"x.weight": torch.ones(1)}):
        pass
    with pytest.raises(Exception, match="another model size"), swapped_weights(target.model, {name: torch.ones(1)}):
        pass


def fake_finetuned(target: TargetModel, root: Path) -> FinetunedConcepts:
    """Per-concept weights without training: concept c scales one MLP matrix by c (enough to steer visibly)."""
    name = "model.layers.1.mlp.down_proj.weight"
    files = {}
    for concept in CONCEPTS:
        files[concept.concept_id] = root / f"{concept.concept_id}.safetensors"
        save_file({name: target.model.get_parameter(name).detach() * concept.concept_id}, str(files[concept.concept_id]))
    return FinetunedConcepts(CONCEPTS, files, base_model=target.model_id, method="sft", config={"loss_type": "sft"})


def test_run_steering_batches_finetuned_concepts_one_concept_at_a_time(tiny_llama_target, tmp_path: Path) -> None:
    target = tiny_llama_target
    before = snapshot(target)
    steerer = fake_finetuned(target, tmp_path).steerer()
    assert isinstance(steerer, FinetunedSteerer)
    split = pd.DataFrame({"concept_id": [3, 3, 7, 7], "input_concept": ["the sea"] * 2 + ["apples"] * 2,
                          "input_id": [0, 1, 0, 1], "original_prompt": ["Write a poem.", "hello world"] * 2})
    seen: list[set[int]] = []
    intervene = steerer.intervene

    def recording(target_, rows):
        seen.append(set(rows["concept_id"]))
        return intervene(target_, rows)

    steerer.intervene = recording  # type: ignore[method-assign]
    result = run_steering(target, steerer, split, tmp_path / "steer.parquet", batch_size=3, progress=False,
                          sampling=SamplingConfig(max_new_tokens=4))
    assert len(result) == 4 and result[["concept_id", "prompt_id"]].drop_duplicates().shape[0] == 4
    assert result["factor"].isna().all() and (result["method"] == "sft").all()
    assert seen and all(len(concepts) == 1 for concepts in seen)
    assert_bitwise_equal(before, target.model)
    with pytest.raises(ValueError, match="must hold one concept"):
        intervene(target, split.assign(factor=float("nan")))


def test_plan_batches_splits_at_concept_boundaries_only_when_asked() -> None:
    rows = pd.DataFrame({"concept_id": [1, 1, 1, 2, 2]})
    lengths = [[0] * n for n in (3, 5, 4, 9, 1)]
    assert plan_batches(rows, lengths, 2) == [[3, 1], [2, 0], [4]]
    assert plan_batches(rows, lengths, 2, by_concept=True) == [[1, 2], [0], [3, 4]]
