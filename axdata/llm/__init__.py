"""The LLM layer shared by generation and judging: chat contract, client, cache, ledger, embedded server."""

from axdata.llm.cache import ResponseCache
from axdata.llm.client import OpenAIChatClient
from axdata.llm.config import LLMConfig
from axdata.llm.ledger import KNOWN_PRICES, Ledger, Prices, Totals
from axdata.llm.server import EmbeddedLLMServer, embedded_llm_server, serve_forever
from axdata.llm.session import open_llm
from axdata.llm.types import (
    BudgetExceededError,
    ChatBackend,
    ChatRequest,
    Completion,
    EmbeddedServerError,
    InvalidUsageError,
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
    "InvalidUsageError",
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
