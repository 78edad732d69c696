"""Tiny random target models (Llama, Gemma-2, Gemma-3 text) saved as real checkpoints, built offline.

Each checkpoint is a directory that `transformers.AutoModelForCausalLM` / `AutoTokenizer` (and so
`axmethods.models.load_target_model`) load like a Hub model: 2 decoder layers, hidden size 64, a
byte-level BPE tokenizer trained in memory on a small corpus (every string encodes, decoding is
lossless) whose chat special tokens are single tokens, and a chat template:
  - Llama: ChatML (`<|im_start|>role\\n…<|im_end|>\\n`), no BOS added by the tokenizer (like SmolLM2);
  - Gemma-2 / Gemma-3: Gemma's `<bos><start_of_turn>user\\n…<end_of_turn>\\n` format; the tokenizer
    adds `<bos>` to plain text as the real Gemma tokenizers do.
Weights are random (seeded), so generated text is gibberish but deterministic.

Fixtures:
  tiny_llama_dir, tiny_gemma2_dir, tiny_gemma3_dir   session-scoped checkpoint directories (Path)
  tiny_model_dirs                                     {"llama": …, "gemma2": …, "gemma3": …}
  tiny_llama_target                                   a fresh TargetModel of the tiny Llama (function scope,
                                                      so hooks or weight edits never leak between tests)
  tiny_target                                         a fresh TargetModel, parametrized over the three
                                                      architectures (a test using it runs three times)
  smollm2_loads                                       (slow tests only) the embedded SmolLM2 converted into a
                                                      session temp cache, then loaded again from that cache
`build_tiny_model(directory, arch, chat_template=...)` builds a variant (e.g. without a chat template).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
)

from axdata.embedded import GEMMA_CHAT_TEMPLATE

Arch = Literal["llama", "gemma2", "gemma3"]
ARCHS: tuple[Arch, ...] = ("llama", "gemma2", "gemma3")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]

_DEFAULT = object()  # "use the architecture's own chat template"; None means "save without one"

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write a short poem about the sea and the sky.",
    "Explain how photosynthesis works in plants, step by step.",
    "What is the capital of France? The capital of France is Paris.",
    "Golden Gate Bridge, San Francisco, California, United States of America.",
    "def add(a, b):\n    return a + b\n",
    "user model assistant system apple zebra hello world instruction response",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: ; , . ! ? ' \" ( ) [ ] { }",
]
_VOCAB_SIZE = 512


def _train_tokenizer(specials: list[str], bos: str | None) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if bos is not None:
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def _tokenizer_for(arch: Arch) -> PreTrainedTokenizerFast:
    if arch == "llama":
        backend = _train_tokenizer(CHATML_SPECIALS, bos=None)
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
            pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        )
    backend = _train_tokenizer(GEMMA_SPECIALS, bos="<bos>")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )


def _config_for(arch: Arch, tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
    }
    if arch == "llama":
        # Wider than the default 0.02 so random greedy answers depend on the prompt (not "\n" forever);
        # Gemma scales embeddings by sqrt(hidden) and needs no help.
        return LlamaConfig(**common, initializer_range=0.2)
    if arch == "gemma2":
        return Gemma2Config(**common, query_pre_attn_scalar=16, sliding_window=64)
    return Gemma3TextConfig(**common, query_pre_attn_scalar=16, sliding_window=64)


def build_tiny_model(directory: str | Path, arch: Arch, chat_template: str | object | None = _DEFAULT,
                     seed: int = 0) -> Path:
    """Save a tiny random `arch` checkpoint with its tokenizer into `directory`; returns it."""
    directory = Path(directory)
    tokenizer = _tokenizer_for(arch)
    if chat_template is _DEFAULT:
        chat_template = CHATML_TEMPLATE if arch == "llama" else GEMMA_CHAT_TEMPLATE
    tokenizer.chat_template = chat_template
    config = _config_for(arch, tokenizer)
    # Fork the RNG so seeding the weights never shifts the random stream of the test that asked.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(root / f"tiny-{arch}", arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["gemma2"]


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["gemma3"]


@pytest.fixture
def tiny_llama_target(tiny_llama_dir: Path):
    from axmethods.models import load_target_model

    return load_target_model(str(tiny_llama_dir), device="cpu", dtype="float32")


@pytest.fixture(params=ARCHS)
def tiny_target(request: pytest.FixtureRequest, tiny_model_dirs: dict[str, Path]):
    from axmethods.models import load_target_model

    return load_target_model(str(tiny_model_dirs[request.param]), device="cpu", dtype="float32")


SMOLLM2_SAMPLE = "The capital of France is"


@dataclass
class SmolLM2Loads:
    target: Any  # the TargetModel of the second (cached) load, shared by every slow test: do not modify
    converted_logits: torch.Tensor  # logits of SMOLLM2_SAMPLE from the first load (the converting one)
    cache_dir: Path
    convert_seconds: float
    cached_seconds: float


@pytest.fixture(scope="session")
def smollm2_loads(tmp_path_factory: pytest.TempPathFactory) -> SmolLM2Loads:
    """SmolLM2-135M-Instruct converted once per session into a temp cache (~25 s), then reloaded."""
    from axmethods.models import load_target_model

    cache_dir = tmp_path_factory.mktemp("axbench-cache")
    started = time.perf_counter()
    converted = load_target_model("smollm2-135m-instruct", cache_dir=str(cache_dir), device="cpu", dtype="float32")
    convert_seconds = time.perf_counter() - started
    converted_logits = _logits(converted, SMOLLM2_SAMPLE)
    del converted
    started = time.perf_counter()
    target = load_target_model("smollm2-135m-instruct", cache_dir=str(cache_dir), device="cpu", dtype="float32")
    cached_seconds = time.perf_counter() - started
    return SmolLM2Loads(target, converted_logits, cache_dir, convert_seconds, cached_seconds)


def _logits(target: Any, text: str) -> torch.Tensor:
    with torch.inference_mode():
        return target.model(**target.tokenizer(text, return_tensors="pt")).logits
