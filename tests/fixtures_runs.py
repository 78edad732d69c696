"""One tiny `axbench run` for the tests that read a finished run (tiny random Llama, a deterministic stand-in LLM).

`tiny_run` runs the whole pipeline once per session; tests that read it must not change it (copy what they
write into). `JudgingServer` and `write_run_config` are for tests that need a run of their own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fixtures_llm import FaultServer, ok
from generation_helpers import RoutingServer
from typer.testing import CliRunner

STAGES = ["model", "llm", "data", "train", "latent", "steering", "judge", "report"]  # a generated run's, in order


class JudgingServer(RoutingServer):
    """The generation stand-in, plus judge ratings that depend only on the rated text."""

    def _next(self, body):
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
        if "rating" in schema.get("properties", {}):
            FaultServer._next(self, body)
            digest = int(hashlib.sha256(body["messages"][-1]["content"].encode()).hexdigest(), 16)
            return ok(json.dumps({"reason": "stand-in", "rating": digest % 3}), prompt_tokens=60, completion_tokens=12)
        if "Classify the topic" in body["messages"][-1]["content"]:  # the `llm` stage's endpoint check
            FaultServer._next(self, body)
            return ok(json.dumps({"genre": "code"}))
        return super()._next(body)


def write_run_config(tmp_path: Path, tiny_llama_dir: Path, llm_server: FaultServer, *, name: str = "r",
                     **sections: dict) -> tuple[Path, Path]:
    """A run config of two concepts, DiffMean + ReFT-r1 + prompt steering at layer 1, `sections` replacing whole
    sections (e.g. methods=…); (config path, run dir)."""
    concepts = tmp_path / "concepts.csv"
    concepts.write_text("rivers and river banks,https://example.org/0\nPython list comprehensions,\n")
    config = {
        "run": {"name": name, "output_dir": str(tmp_path / "runs"), "layer": 1},
        "model": {"model": str(tiny_llama_dir), "device": "cpu", "dtype": "float32"},
        "llm": {"endpoint": llm_server.base_url, "model": "gpt-4o-mini", "backoff_base_s": 0.0,
                "structured_output": "json_schema"},
        "data": {"concept_path": str(concepts), "num_of_examples": 4, "output_length": 8,
                 "latent_num_of_examples": 4, "imbalance_factor": 2, "steering_num_of_examples": 4},
        "methods": {"train": ["diffmean", "reft-r1", "prompt-steering"], "settings": {"reft-r1": {"num_train_epochs": 1}}},
        "inference": {"factors": [0.5, 2.0], "max_new_tokens": 6, "steering_batch_size": 8},
        "report": {"baseline": "prompt-steering", "n_resamples": 50, "dataset_id": "me/rivers-bench"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**config, **sections}))
    return path, tmp_path / "runs" / name


@pytest.fixture
def judging_llm() -> JudgingServer:
    """A stand-in LLM of a test's own: it generates data and judges (`JudgingServer`)."""
    server = JudgingServer().start()
    yield server
    server.stop()


@dataclass(frozen=True)
class TinyRun:
    config_path: Path
    run_dir: Path
    server: JudgingServer
    output: str  # what `axbench run` printed


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> TinyRun:
    """A finished `axbench run` (every stage), shared by the session: read it, never write into it."""
    from axeval.cli import app

    server = JudgingServer().start()
    path, run_dir = write_run_config(tmp_path_factory.mktemp("tiny_run"), tiny_llama_dir, server)
    result = CliRunner().invoke(app, ["run", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    yield TinyRun(path, run_dir, server, result.output)
    server.stop()
