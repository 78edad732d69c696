"""Stage `model`: load the target model and record the facts every later stage relies on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from axdata.hashing import content_hash
from axdata.io import atomic_write_json
from axdata.llm import ChatRequest, SamplingParams
from axeval.pipeline import RunContext, Stage
from axmethods.chat_backend import TransformersChatBackend

PROBE_INSTRUCTION = "In one sentence, what is a rainbow?"


class TargetModelStage(Stage):
    name = "model"
    description = "load the target model, check the layer, record its facts"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"model": ctx.config.section_hash("model"), "layer": ctx.config.run.layer}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.root / "model.json"]

    def describe(self, s: dict[str, Any]) -> str:
        return f"{s['model_id']}: {s['num_layers']} layers, d={s['hidden_size']}, layer {s['layer']}"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        t0 = time.perf_counter()
        target = ctx.target_model()
        load_seconds = time.perf_counter() - t0
        layer = ctx.config.run.layer
        target.validate_layer(layer)
        # The target model's own greedy answer: the same path that makes AxBench's shared negatives.
        backend = TransformersChatBackend(target, batch_size=1)
        probe = ctx.run_async(backend.complete(ChatRequest.user(
            PROBE_INSTRUCTION, purpose="probe", params=SamplingParams(temperature=0.0, max_tokens=48))))
        facts = {
            "spec": target.spec,
            "model_id": target.model_id,
            "revision": target.revision,
            "num_layers": target.num_layers,
            "hidden_size": target.hidden_size,
            "layer": layer,
            "residual_module": target.residual_module_path(layer),
            "pyvene_component": target.pyvene_component(layer),
            "prefix_length": target.prefix_length,
            "chat_template_hash": content_hash(target.chat_template),
            "dtype": str(target.dtype),
            "device": str(target.device),
            "load_seconds": round(load_seconds, 2),
            "probe_instruction": PROBE_INSTRUCTION,
            "probe_answer": probe.text,
        }
        atomic_write_json(ctx.run_dir.root / "model.json", facts)
        return {k: facts[k] for k in ("model_id", "num_layers", "hidden_size", "layer", "prefix_length",
                                      "load_seconds", "probe_answer")}
