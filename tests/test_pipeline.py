from pathlib import Path

import pytest
import yaml

from axdata.io import atomic_write_json
from axeval.config import AxbenchConfig
from axeval.pipeline import RunContext, Stage, run_pipeline


class CountingStage(Stage):
    version = "1"

    def __init__(self, name, depends_on=(), fail=False):
        self.name = name
        self.depends_on = depends_on
        self.fail = fail
        self.runs = 0

    def inputs(self, ctx: RunContext):
        return {"seed": ctx.config.run.seed, "upstream": [ctx.stamp_hash(d) for d in self.depends_on]}

    def outputs(self, ctx: RunContext):
        return [ctx.run_dir.root / f"{self.name}.json"]

    def run(self, ctx: RunContext):
        self.runs += 1
        if self.fail:
            raise RuntimeError("boom")
        atomic_write_json(ctx.run_dir.root / f"{self.name}.json", {"ok": True})
        return {"runs": self.runs}


def config_for(tmp_path, *overrides):
    return AxbenchConfig.load(None, [f"run.output_dir={tmp_path}", "run.name=r", *overrides])


def test_resolved_config_is_written_first_with_hashes(tmp_path):
    config = config_for(tmp_path)
    run_pipeline(config, [CountingStage("a")])
    written = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert written["hashes"]["config"] == config.hash()
    assert AxbenchConfig.from_dict(written) == config


def test_current_stages_are_skipped_and_changes_propagate(tmp_path):
    a, b = CountingStage("a"), CountingStage("b", depends_on=("a",))
    run_pipeline(config_for(tmp_path), [a, b])
    result = run_pipeline(config_for(tmp_path), [a, b])
    assert [s.status for s in result.stages] == ["skipped", "skipped"]
    assert (a.runs, b.runs) == (1, 1)

    # A config change re-runs `a`; its new stamp makes `b` stale too.
    result = run_pipeline(config_for(tmp_path, "run.seed=1"), [a, b])
    assert [s.status for s in result.stages] == ["ran", "ran"]

    # A deleted output re-runs only that stage.
    Path(tmp_path / "r" / "b.json").unlink()
    result = run_pipeline(config_for(tmp_path, "run.seed=1"), [a, b])
    assert [s.status for s in result.stages] == ["skipped", "ran"]

    result = run_pipeline(config_for(tmp_path, "run.seed=1"), [a, b], force=True)
    assert [s.status for s in result.stages] == ["ran", "ran"]


def test_failed_stage_leaves_no_stamp_and_resumes(tmp_path):
    a, b = CountingStage("a"), CountingStage("b", fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(config_for(tmp_path), [a, b])
    assert not (tmp_path / "r" / "stages" / "b.json").exists()
    b.fail = False
    result = run_pipeline(config_for(tmp_path), [a, b])
    assert [s.status for s in result.stages] == ["skipped", "ran"]


def test_damaged_stamp_reruns_the_stage(tmp_path):
    a = CountingStage("a")
    run_pipeline(config_for(tmp_path), [a])
    (tmp_path / "r" / "stages" / "a.json").write_text("{truncated")
    result = run_pipeline(config_for(tmp_path), [a])
    assert result.stages[0].status == "ran"


def test_a_second_run_on_a_locked_run_directory_stops_naming_the_holder(tmp_path):
    from filelock import FileLock
    from typer.testing import CliRunner

    from axeval.cli import app
    from axeval.pipeline import LOCK_FILE, LOCK_OWNER_FILE, RunLockedError, locked_run_directory

    config = config_for(tmp_path)
    stage = CountingStage("a")
    with locked_run_directory(config.run_dir):  # the first run, still going
        assert "pid" in (config.run_dir / LOCK_OWNER_FILE).read_text()
        with pytest.raises(RunLockedError, match=r"in use by axbench run \(pid \d+"):
            run_pipeline(config, [stage])
        assert stage.runs == 0  # nothing ran, nothing was written
        path = tmp_path / "run.yaml"
        path.write_text(f"run: {{output_dir: {tmp_path}, name: {config.run.name}}}\n")
        result = CliRunner().invoke(app, ["run", str(path)])
        assert result.exit_code == 1 and "Run directory busy" in result.output
    assert not (config.run_dir / LOCK_OWNER_FILE).exists()
    run_pipeline(config, [stage])  # released: the next run goes ahead
    assert stage.runs == 1 and FileLock(config.run_dir / LOCK_FILE).acquire(timeout=0)



def test_a_run_removes_temporary_files_a_killed_writer_left(tmp_path):
    config = config_for(tmp_path)
    leftover = config.run_dir / "dictionaries" / "diffmean" / "l0" / ".weights.safetensors.abc123.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file")
    run_pipeline(config, [CountingStage("a")])
    assert not leftover.exists()
