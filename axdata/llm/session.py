"""`open_llm(config)`: the one way pipeline code gets a ready chat client (and, if asked, a local server)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from axdata.llm.cache import ResponseCache
from axdata.llm.client import OpenAIChatClient
from axdata.llm.config import LLMConfig
from axdata.llm.ledger import Ledger
from axdata.llm.server import embedded_llm_server


@contextmanager
def open_llm(
    config: LLMConfig,
    *,
    cache_path: str | Path | None = None,
    ledger_path: str | Path | None = None,
    api_key: str | None = None,
) -> Iterator[OpenAIChatClient]:
    """Yield an `OpenAIChatClient` for `config`; the embedded server (if any) and the cache close on exit.

    `cache_path=None` disables the response cache; `ledger_path=None` keeps the ledger in memory.
    A dry run never starts the embedded server: it sends nothing.
    """
    with ExitStack() as stack:
        if config.is_embedded and not config.dry_run:
            server = stack.enter_context(
                embedded_llm_server(
                    config.model,
                    port=config.embedded_port,
                    n_parallel=config.embedded_n_parallel,
                    n_ctx=config.embedded_n_ctx,
                    threads=config.embedded_threads,
                )
            )
            base_url = server.base_url
        elif config.is_embedded:
            base_url = "http://127.0.0.1/v1"
        else:
            base_url = config.endpoint
        cache = stack.enter_context(ResponseCache(cache_path)) if cache_path is not None else None
        ledger = Ledger(ledger_path, max_usd=config.max_usd)
        client = OpenAIChatClient(config, base_url, cache=cache, ledger=ledger, api_key=api_key)
        stack.callback(client.close)
        yield client
