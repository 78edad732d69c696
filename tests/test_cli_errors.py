"""User errors on the command line: one message naming the input, the problem and the fix, no traceback (unless
--debug), exit 2 for usage errors and 1 for failures. Runs the real entry point (`axeval.cli.main`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from axeval.cli import LOGGERS, main


@pytest.fixture(autouse=True)
def _no_cli_logging_afterwards():
    """`main` configures logging as an application does; the rest of the test session must not inherit it."""
    yield
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h.get_name() == "axbench-cli"]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out + captured.err


@pytest.mark.parametrize("content, message", [
    (b"- a\n- b\n", "the config must be a mapping of sections"),
    (b"\xff\xfe\x00binary", "is not a text file"),
    (b"run: [unclosed\n", "is not valid YAML"),
    (b"inference: {steering_batch_size: 0}\n", "inference.steering_batch_size = 0: must be greater than 0"),
])
def test_bad_config_files_are_usage_errors(tmp_path: Path, capsys, content: bytes, message: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    code, output = _run(capsys, "run", str(path))
    assert code == 2 and message in output and "Traceback" not in output


def test_a_failed_stage_is_one_line_and_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    path = tmp_path / "run.yaml"
    (tmp_path / "no-model").mkdir()  # the model stage fails at once: a folder without a model
    path.write_text(f"run: {{output_dir: {tmp_path}, name: r, layer: 0}}\n"
                    f"model: {{model: {tmp_path / 'no-model'}, device: cpu}}\n")
    code, output = _run(capsys, "run", str(path))
    assert code == 1 and "Traceback" not in output
    assert "axbench: error: stage" in output and "--debug shows the traceback" in output
    with pytest.raises(Exception) as raised:  # --debug: the exception itself, for its traceback
        main(["run", str(path), "--debug"])
    assert "failed" in str(raised.value)


def test_a_bug_deep_inside_a_stage_shows_its_traceback(tmp_path: Path, capsys, monkeypatch) -> None:
    """A ValueError that is not one of our user errors is a defect: the CLI shows its traceback and says so,
    instead of passing it off as the user's mistake."""
    def broken_loader(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr("axeval.pipeline.load_target_model", broken_loader)
    path = tmp_path / "run.yaml"
    path.write_text(f"run: {{output_dir: {tmp_path}, name: r, layer: 0}}\nmodel: {{model: whatever, device: cpu}}\n")
    code, output = _run(capsys, "run", str(path))
    assert code == 1 and "Traceback" in output and "in broken_loader" in output
    assert "axbench: internal error (ValueError): an internal invariant broke" in output
    assert "This is a bug in axbench" in output and "axbench: error:" not in output


def test_a_damaged_parquet_names_the_file(tmp_path: Path, capsys) -> None:
    good = tmp_path / "latent.parquet"
    pd.DataFrame({"method": ["m"], "concept_id": [0], "category": ["positive"], "score": [1.0]}).to_parquet(good)
    bad = tmp_path / "truncated.parquet"
    bad.write_bytes(good.read_bytes()[:40])
    code, output = _run(capsys, "eval", "detect", str(bad))
    assert code == 1 and "Traceback" not in output and "truncated.parquet" in output and "corrupted" in output


def test_unknown_commands_and_options_are_usage_errors(capsys) -> None:
    code, output = _run(capsys, "nope")
    assert code == 2 and "No such command" in output
    code, output = _run(capsys, "config", "show", "--nope")
    assert code == 2 and "No such option" in output
