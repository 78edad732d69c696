"""The LLM layer shared by generation and judging: chat contract, client, cache, ledger, embedded server."""

from axdata.generation.cache import ResponseCache
from axdata.generation.client import OpenAIChatClient
from axdata.generation.config import LLMConfig
from axdata.generation.ledger import KNOWN_PRICES, Ledger, Prices, Totals
from axdata.generation.server import EmbeddedLLMServer, embedded_llm_server, serve_forever
from axdata.generation.session import open_llm
from axdata.generation.types import (
    BudgetExceededError,
    ChatBackend,
    ChatRequest,
    Completion,
    EmbeddedServerError,
    LLMError,
    LLMRequestError,
    SamplingParams,
    StructuredOutputError,
)

__all__ = [
    "KNOWN_PRICES",
    "BudgetExceededError",
    "ChatBackend",
    "ChatRequest",
    "Completion",
    "EmbeddedLLMServer",
    "EmbeddedServerError",
    "LLMConfig",
    "LLMError",
    "LLMRequestError",
    "Ledger",
    "OpenAIChatClient",
    "Prices",
    "ResponseCache",
    "SamplingParams",
    "StructuredOutputError",
    "Totals",
    "embedded_llm_server",
    "open_llm",
    "serve_forever",
]
