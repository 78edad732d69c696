"""A deterministic OpenAI stand-in for generation tests: answers depend only on the prompt and the seed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from fixtures_llm import FaultServer, Reply, ok

from axdata.concepts import Concept
from axdata.llm import Ledger, LLMConfig, OpenAIChatClient, ResponseCache

CONCEPTS = [
    Concept(0, "rivers and river banks", "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/1234"),
    Concept(1, "Python list comprehensions"),
    Concept(2, "fractions in word problems"),
]


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:10]


def answer(body: dict[str, Any]) -> str:
    """What the stand-in LLM says: a fixed rule per template, pseudo-random text keyed by prompt and seed."""
    prompt = body["messages"][-1]["content"]
    seed = body.get("seed")
    if body.get("response_format") or "Reply with the single best genre" in prompt:
        concept = re.search(r'Concept: "(.*)"', prompt).group(1)
        if "unclassifiable" in concept:
            return "Hmm, this could be code or math."
        genre = "code" if "Python" in concept else "math" if "fractions" in concept else "text"
        return json.dumps({"genre": genre})
    if prompt.startswith("List up to 10 common English words"):
        return "1. Bank\n2. river\n- money\n* Flow" if "river" in prompt else "<NONE>"
    if prompt.startswith("The word "):
        word = re.match(r'The word "([^"]+)"', prompt).group(1)
        return {"bank": "a company that keeps money", "river": "<NONE>", "money": "cash",
                "flow": "a state of deep focus"}[word]
    if prompt.startswith("Meaning A"):
        return "Answer: <NO>" if "focus" in prompt else "They differ. Answer: <YES>"
    if "stubborn" in prompt and prompt.startswith("Respond"):
        return "I'm sorry, but I can't help with that."
    if "flaky" in prompt and prompt.startswith("Respond") and int(_digest(seed), 16) % 2 == 0:
        return "   "
    if "Write <FINAL>" in prompt:
        return f"<FINAL> hard {_digest(prompt, seed)} bank"
    if prompt.startswith("Write an instruction"):
        return "Always talk about rivers."
    concept = re.search(r'"([^"]*)"', prompt)
    if prompt.startswith("Rewrite the instruction below"):  # suppression: the concept-blended instruction
        return f"Rewritten instruction: {prompt.rsplit('Instruction: ', 1)[1]} Relate it to {concept.group(1)}."
    if prompt.startswith("Write a system instruction") or prompt.startswith("Here is a rule"):  # the defence
        return (f"Strictly avoid the rule {concept.group(1)}." if "rule" in prompt.split("\n")[0]
                else "Never mention the concept in your answer.")
    if re.match(r"Write \d+ short example exchanges", prompt):  # many-shot attack examples
        k, theme = int(prompt.split()[1]), re.search(r'theme "([^"]*)"', prompt).group(1)
        return "\n\n".join(f"**Question {i + 1}:** What about {theme}, {seed}-{i}?\n**Answer:** An answer "
                           f"that brings in the concept.\nIt runs on." for i in range(k))
    return f'"response {_digest(prompt, seed)} with several words in it to be cut by the tokenizer later"'


class RoutingServer(FaultServer):
    """Answers every chat request with `answer(body)`; token counts grow with the text, like a real server."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s

    def _next(self, body: dict[str, Any]) -> Reply:
        super()._next(body)
        text = answer(body)
        prompt = body["messages"][-1]["content"]
        reply = ok(text, prompt_tokens=len(prompt) // 4 + 10, completion_tokens=max(1, len(text) // 4))
        reply.delay_s = self.delay_s
        return reply


def client_for(base_url: str, root: Path, **config: Any) -> OpenAIChatClient:
    llm_config = LLMConfig(endpoint=base_url, model="gpt-4o-mini", max_retries=1, backoff_base_s=0.0,
                           structured_output="json_schema", **config)
    return OpenAIChatClient(llm_config, base_url, cache=ResponseCache(root / "cache.sqlite"),
                            ledger=Ledger(root / "ledger.jsonl"))
