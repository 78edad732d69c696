"""Configuration of the LLM for generation and judging (TRL-style dataclass, parsed by HfArgumentParser)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from axdata.embedded import DEFAULT_EMBEDDED_MODEL, EMBEDDED_MODELS
from axdata.errors import InputError

EMBEDDED_ENDPOINT = "embedded"
STRUCTURED_OUTPUT_MODES = ("auto", "json_schema", "prompt")


@dataclass
class LLMConfig:
    """Where the LLM lives, how hard to push it, and how much it may cost."""

    endpoint: str = field(
        default=EMBEDDED_ENDPOINT,
        metadata={
            "help": "'embedded' starts the local llama.cpp server on 127.0.0.1; otherwise an "
            "OpenAI-compatible base URL such as https://api.openai.com/v1 or http://127.0.0.1:8000/v1."
        },
    )
    model: str = field(
        default=DEFAULT_EMBEDDED_MODEL,
        metadata={
            "help": "Model name sent to the endpoint. With endpoint='embedded' it must be an embedded "
            f"model: {', '.join(EMBEDDED_MODELS)}."
        },
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "Name of the environment variable holding the API key (the key itself is never "
            "stored in configs, logs, cache or ledger). Local servers need none."
        },
    )
    max_concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    max_retries: int = field(
        default=6,
        metadata={
            "help": "Retries per request after the first attempt (429, 5xx, timeouts, connection "
            "errors, malformed answers)."
        },
    )
    max_invalid_retries: int = field(
        default=2,
        metadata={
            "help": "Re-asks after an answer that fails its JSON schema (each answer is paid for), without "
            "backoff; never for a deterministic request (temperature 0), which would get the same answer."
        },
    )
    timeout_s: float = field(default=60.0, metadata={"help": "Timeout of one HTTP attempt, in seconds."})
    backoff_base_s: float = field(
        default=1.0,
        metadata={"help": "Base of the exponential backoff between retries (full jitter), in seconds."},
    )
    backoff_max_s: float = field(
        default=60.0, metadata={"help": "Longest wait between two retries, in seconds."}
    )
    max_usd: float | None = field(
        default=None,
        metadata={
            "help": "Spend limit of one run in USD; calls that could exceed it are refused. None = no limit."
        },
    )
    input_usd_per_mtok: float | None = field(
        default=None,
        metadata={
            "help": "Price of a million prompt tokens in USD; None = the known price of "
            "`model`, 0 for unknown or local models."
        },
    )
    output_usd_per_mtok: float | None = field(
        default=None,
        metadata={
            "help": "Price of a million completion tokens in USD; None = the known price "
            "of `model`, 0 for unknown or local models."
        },
    )
    structured_output: str = field(
        default="auto",
        metadata={
            "help": "How JSON-schema answers are requested: 'json_schema' (server-side response_format), "
            "'prompt' (schema in the prompt, parsed and validated client-side), or 'auto' "
            "(json_schema, falling back to prompt when the server rejects it)."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Send nothing: answer from the cache where possible and record "
            "estimated calls and cost in the ledger."
        },
    )
    embedded_port: int | None = field(
        default=None, metadata={"help": "Port of the embedded server; None = a free port."}
    )
    embedded_n_parallel: int = field(
        default=4, metadata={"help": "Requests the embedded server decodes in parallel (llama.cpp slots)."}
    )
    embedded_n_ctx: int = field(
        default=8192, metadata={"help": "Total context of the embedded server, shared by its parallel slots."}
    )
    embedded_threads: int | None = field(
        default=None, metadata={"help": "CPU threads of the embedded server; None = all cores."}
    )

    def __post_init__(self) -> None:
        if not self.endpoint:
            raise InputError("LLMConfig.endpoint is empty; use 'embedded' or an OpenAI-compatible base URL.")
        if self.is_embedded:
            if self.model not in EMBEDDED_MODELS:
                raise InputError(
                    f"LLMConfig.model={self.model!r} is not an embedded model, but endpoint='embedded'. "
                    f"Use one of: {', '.join(EMBEDDED_MODELS)}; or set endpoint to a server's base URL."
                )
        elif not self.endpoint.startswith(("http://", "https://")):
            raise InputError(
                f"LLMConfig.endpoint={self.endpoint!r} is neither 'embedded' nor an http(s) URL; "
                "use e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1."
            )
        if not self.model:
            raise InputError("LLMConfig.model is empty; name the model the endpoint serves.")
        if self.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise InputError(
                f"LLMConfig.structured_output={self.structured_output!r} is unknown; use one of "
                f"{', '.join(STRUCTURED_OUTPUT_MODES)}."
            )
        for name in ("max_concurrency", "embedded_n_parallel", "embedded_n_ctx"):
            if getattr(self, name) < 1:
                raise InputError(f"LLMConfig.{name}={getattr(self, name)!r} must be at least 1.")
        if self.embedded_threads is not None and self.embedded_threads < 1:
            raise InputError(
                f"LLMConfig.embedded_threads={self.embedded_threads!r} must be at least 1 or None."
            )
        for name in ("max_retries", "max_invalid_retries"):
            if getattr(self, name) < 0:
                raise InputError(f"LLMConfig.{name}={getattr(self, name)!r} must be 0 or more.")
        for name in ("timeout_s", "backoff_max_s"):
            if getattr(self, name) <= 0:
                raise InputError(f"LLMConfig.{name}={getattr(self, name)!r} must be positive.")
        if self.backoff_base_s < 0:
            raise InputError(f"LLMConfig.backoff_base_s={self.backoff_base_s!r} must be 0 or more.")
        for name in ("max_usd", "input_usd_per_mtok", "output_usd_per_mtok"):
            value = getattr(self, name)
            # NaN compares False with everything: a NaN price or limit would switch the budget guard off.
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"LLMConfig.{name}={value!r} must be a finite number, 0 or more (or None).")
        if self.embedded_port is not None and not 0 < self.embedded_port < 65536:
            raise InputError(
                f"LLMConfig.embedded_port={self.embedded_port!r} is not a TCP port (1–65535) or None."
            )

    @property
    def is_embedded(self) -> bool:
        return self.endpoint == EMBEDDED_ENDPOINT
