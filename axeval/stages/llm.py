"""Stage `llm`: reach the configured LLM and confirm it answers a schema-constrained request.

Generation and judging both need structured answers; finding out here that an endpoint cannot give
them costs one call instead of a failed run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axdata.io import atomic_write_json
from axdata.llm import ChatRequest, SamplingParams
from axeval.pipeline import RunContext, Stage

CHECK_SCHEMA = {
    "type": "object",
    "properties": {"genre": {"type": "string", "enum": ["text", "code", "math"]}},
    "required": ["genre"],
    "additionalProperties": False,
}
CHECK_PROMPT = (
    "Classify the topic 'Python list comprehensions' as one genre: text, code or math. "
    'Answer with a JSON object like {"genre": "code"}.'
)


class LLMStage(Stage):
    name = "llm"
    description = "reach the configured LLM and check structured output"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        llm = ctx.config.llm
        return {"endpoint": llm.endpoint, "model": llm.model, "structured_output": llm.structured_output,
                "prompt": CHECK_PROMPT, "schema": CHECK_SCHEMA}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.root / "llm.json"]

    def describe(self, s: dict[str, Any]) -> str:
        return f"{s['model']} answers structured requests"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        client = ctx.llm()
        request = ChatRequest.user(CHECK_PROMPT, purpose="check", json_schema=CHECK_SCHEMA,
                                   params=SamplingParams(temperature=0.0, max_tokens=32))
        answer = ctx.run_async(client.complete(request))
        facts = {
            "endpoint": ctx.config.llm.endpoint,
            "model": client.model_name,
            "answer": answer.parsed,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "dry_run": answer.dry_run,
        }
        atomic_write_json(ctx.run_dir.root / "llm.json", facts)
        return {"model": client.model_name, "answer": answer.parsed}
