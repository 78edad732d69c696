"""The API key reaches the HTTP request and nothing else: no file of a whole run holds it."""

from __future__ import annotations

import yaml
from fixtures_runs import write_run_config
from typer.testing import CliRunner

from axeval.cli import app

SECRET = "sk-axbench-test-0123456789abcdef"


def test_the_api_key_lands_in_no_output_file(tmp_path, tiny_llama_dir, judging_llm, monkeypatch):
    monkeypatch.setenv("AXBENCH_TEST_SECRET_KEY", SECRET)
    path, run_dir = write_run_config(tmp_path, tiny_llama_dir, judging_llm)
    config = yaml.safe_load(path.read_text())
    config["llm"]["api_key_env"] = "AXBENCH_TEST_SECRET_KEY"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["run", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"Bearer {SECRET}" in judging_llm.authorizations, "the key was not sent"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 20
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == [] and SECRET not in result.output
