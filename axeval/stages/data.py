"""Stage `data`: generate the concept datasets (train, latent, latent_imbalance, steering, preference).

The LLM writes concept responses; the target model, through `TransformersChatBackend`, writes its own
answers (the shared negatives and the losing side of preference pairs), sharing the run's response
cache and ledger. Units of work are committed under `<run>/generation/<config>/`, so a killed stage resumes
where it stopped; the splits go to `<run>/data/<config>/`, the report to `<run>/generation_report.json`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from axdata.builders import concepts_path
from axdata.concepts import Concept, load_concepts
from axdata.errors import InputError
from axdata.generation.config import DataGenerationConfig
from axdata.generation.examples import tokenizer_truncator
from axdata.generation.pipeline import REPORT_FILE, GenerationResult, generate_dataset
from axdata.generation.templates import template_versions
from axdata.hashing import file_hash
from axeval.pipeline import RunContext, Stage, join_counts
from axmethods.chat_backend import TransformersChatBackend


def default_dataset_config(model_spec: str, layer: int) -> str:
    """`<model name>-l<layer>`, e.g. gemma-2-2b-it-l20 (the last path segment of the model, lower-cased)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_spec.rstrip("/")).name).strip("-.").lower() or "model"
    return f"{name}-l{layer}"


class DataStage(Stage):
    name = "data"
    description = "generate the concept datasets with the LLM and the target model"

    def __init__(self, data_config: DataGenerationConfig | None = None):
        # Explicit config for callers outside a full run config (the CLI, tests); else the run's `data` section.
        self.data_config = data_config

    def config(self, ctx: RunContext) -> DataGenerationConfig:
        return self.data_config if self.data_config is not None else ctx.config.data

    def dataset_config(self, ctx: RunContext) -> str:
        return self.config(ctx).dataset_config or default_dataset_config(ctx.config.model.model, ctx.config.run.layer)

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        config = self.config(ctx)
        return {
            "data": dataclasses.asdict(config),
            "dataset_config": self.dataset_config(ctx),
            "concepts": _hash_if_file(config.concept_path),
            "examples": _hash_if_file(config.examples_path),
            "llm": {"endpoint": ctx.config.llm.endpoint, "model": ctx.config.llm.model},
            "model": ctx.config.section_hash("model"),
            "templates": template_versions(),
        }

    def outputs(self, ctx: RunContext) -> list[Path]:
        folder = ctx.run_dir.data_dir / self.dataset_config(ctx)
        return ([folder / f"{split}-00000-of-00001.parquet" for split in self.config(ctx).splits]
                + [concepts_path(ctx.run_dir.data_dir, self.dataset_config(ctx)), ctx.run_dir.root / REPORT_FILE])

    def provenance(self, config: Any) -> dict[str, Any]:
        return {"templates": template_versions()}

    def describe(self, s: dict[str, Any]) -> str:
        return f"{s['dataset_config']}: {join_counts(s['rows'])} rows; {s['llm_calls']} LLM calls, {s['failures']} failures"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        result = generate_for_run(ctx, self.config(ctx), self.dataset_config(ctx), ctx.run_dir.data_dir)
        report = result.report
        return {"dataset_config": result.dataset_config, "rows": result.rows, "failures": len(report["failures"]),
                "llm_calls": report["ledger"]["total"]["calls"],
                "training_usd_per_concept_at_gpt_4o_mini": report["cost_projection"]["training_usd_per_concept"]}


def _hash_if_file(path: str | None) -> str | None:
    return file_hash(path) if path and Path(path).exists() else path


def read_concepts(config: DataGenerationConfig) -> list[Concept]:
    if not config.concept_path:
        raise InputError("data.concept_path is not set: generation needs a concept list (.csv, .txt, .jsonl or "
                         "Neuronpedia .json). Set data.concept_path in the config or pass --concepts.")
    return load_concepts(config.concept_path, max_concepts=config.max_concepts, seed=config.seed)


def generate_for_run(ctx: RunContext, config: DataGenerationConfig, dataset_config: str, out_dir: Path
                     ) -> GenerationResult:
    """Generate `config`'s splits into `out_dir/dataset_config` with the run's LLM and target model."""
    concepts = read_concepts(config)
    llm = ctx.llm()
    target_model = ctx.target_model()
    target = TransformersChatBackend(target_model, batch_size=config.target_batch_size,
                                     cache=getattr(llm, "cache", None), ledger=getattr(llm, "ledger", None))
    return ctx.run_async(generate_dataset(
        concepts, config, llm=llm, target=target, out_dir=out_dir, dataset_config=dataset_config,
        work_dir=ctx.run_dir.root / "generation" / dataset_config, report_path=ctx.run_dir.root / REPORT_FILE,
        truncate=tokenizer_truncator(target_model.tokenizer),
    ))
