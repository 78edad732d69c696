"""Writers never clobber, and every writer into a run directory takes the run's lock.

- A command writing a result folder refuses one that exists and holds something unless `--overwrite` is given;
  with it, the new result is written beside the old one and swapped in whole (a failed write leaves the old one).
- `eval report`, `infer latent` (its scores and the calibration it writes back), `dictionary output-score`,
  `dictionary pull` / `from-hypernet` and `data pull` into a run directory take its lock: while `axbench run` holds
  it they refuse at once, naming the holder, as a second `axbench run` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from test_builders import make_dataset
from test_dictionary import make_dictionary
from typer.testing import CliRunner

from axdata.builders import list_configs
from axdata.builders.hub import push_dataset
from axdata.errors import OutputExistsError
from axdata.io import replaced_directory
from axeval.cli import app
from axeval.pipeline import LOCK_OWNER_FILE, locked_run_directory
from axeval.rundir import enclosing_run_directory
from axmethods.dictionary import SteeringDictionary
from axmethods.results import load_result

runner = CliRunner()
SENTINEL = "keep.txt"


def _invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def _snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _existing_result(out: Path) -> dict[str, str]:
    """`out` holding an earlier result (another dictionary) and a file of the user's."""
    make_dictionary(n=2, layer=3).save_pretrained(out)
    (out / SENTINEL).write_text("mine")
    return _snapshot(out)


@dataclass
class Writer:
    """A command writing a result folder: `args(out)` its command line, `check(out)` that `out` holds its result."""

    name: str
    args: Callable[[Path], list[str]]
    check: Callable[[Path], bool]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, hub_server, tiny_llama_dir: Path) -> dict:
    """What the writers read: a dictionary and a dataset on the Hub stand-in, a tiny HyperSteer network."""
    import os
    import uuid

    from test_hypersteer import CONCEPTS, _frame

    from axmethods.models import load_target_model
    from axmethods.trainers.hypersteer import HyperSteerConfig, train_hypersteer

    root = tmp_path_factory.mktemp("sources")
    user = hub_server.store.user
    dictionary_repo, dataset_repo = f"{user}/clobber-{uuid.uuid4().hex[:8]}", f"{user}/clobber-{uuid.uuid4().hex[:8]}"
    make_dictionary(n=4, layer=0).push_to_hub(dictionary_repo, token=os.environ["HF_TOKEN"])
    push_dataset(make_dataset(root / "ds", {"tiny": True}), dataset_repo)
    target = load_target_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    net = train_hypersteer(target, lambda split: _frame() if split == "preference" else None, CONCEPTS,
                           HyperSteerConfig(layer=1, max_steps=1, per_device_train_batch_size=4, objective="reps",
                                            disable_tqdm=True, logging_steps=100))
    net.save_pretrained(root / "net")
    (root / "concepts.txt").write_text("volcanoes\nold maps\n")
    return {"dictionary": dictionary_repo, "dataset": dataset_repo, "net": root / "net",
            "concepts": root / "concepts.txt", "model": tiny_llama_dir}


def _writers(sources: dict) -> list[Writer]:
    return [
        Writer("dictionary pull", lambda out: ["dictionary", "pull", sources["dictionary"], str(out)],
               lambda out: load_result(out).concept_ids == make_dictionary(n=4).concept_ids),
        Writer("data pull", lambda out: ["data", "pull", sources["dataset"], str(out)],
               lambda out: list_configs(out) == ["tiny"]),
        Writer("dictionary from-hypernet",
               lambda out: ["dictionary", "from-hypernet", str(sources["net"]), "--concepts", str(sources["concepts"]),
                            "--out", str(out), "--model", str(sources["model"]), "--device", "cpu"],
               lambda out: load_result(out).n_concepts == 2),
    ]


WRITERS = ["dictionary pull", "data pull", "dictionary from-hypernet"]


@pytest.mark.parametrize("name", WRITERS)
def test_a_writer_refuses_an_existing_result_folder_without_overwrite(sources: dict, tmp_path: Path,
                                                                      name: str) -> None:
    writer = next(w for w in _writers(sources) if w.name == name)
    out = tmp_path / "out"
    before = _existing_result(out)
    result = _invoke(*writer.args(out))
    assert result.exit_code == 1, result.output  # before: replaced the weights, exit 0
    assert "already exists" in result.output and "--overwrite" in result.output and str(out) in result.output
    assert _snapshot(out) == before
    # An empty folder is no result: it is written into.
    (tmp_path / "empty").mkdir()
    assert _invoke(*writer.args(tmp_path / "empty")).exit_code == 0 and writer.check(tmp_path / "empty")


@pytest.mark.parametrize("name", WRITERS)
def test_with_overwrite_a_writer_replaces_the_folder_whole(sources: dict, tmp_path: Path, name: str) -> None:
    writer = next(w for w in _writers(sources) if w.name == name)
    out = tmp_path / "out"
    _existing_result(out)
    result = _invoke(*writer.args(out), "--overwrite")
    assert result.exit_code == 0, result.output
    assert writer.check(out) and not (out / SENTINEL).exists() and not (out / "l3").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging or retired folder left
    assert (out.stat().st_mode & 0o777) != 0o700  # the usual permissions, not mkdtemp's


def test_a_failed_overwrite_leaves_the_old_result_whole(sources: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    before = _existing_result(out)
    written = SteeringDictionary.write_files

    def fail_halfway(self: SteeringDictionary, root: Path) -> Path:
        written(self, root)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SteeringDictionary, "write_files", fail_halfway)
    result = _invoke("dictionary", "pull", sources["dictionary"], str(out), "--overwrite")
    assert result.exit_code != 0
    assert _snapshot(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_replaced_directory_swaps_only_a_complete_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match=r"already exists and is not an empty directory.*--overwrite"):
        with replaced_directory(out, overwrite=False):
            pass
    with pytest.raises(RuntimeError, match="interrupted"):
        with replaced_directory(out, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert [path.name for path in out.iterdir()] == ["old.txt"]
    with replaced_directory(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [path.name for path in out.iterdir()] == ["new.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is not a directory"):
        with replaced_directory(tmp_path / "file", overwrite=True):
            pass


# ----- the run lock ------------------------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory as `axbench run` leaves one: its config and stage stamps, a calibrated dictionary, a dataset."""
    run = tmp_path / "runs" / "demo"
    (run / "stages").mkdir(parents=True)
    (run / "config.yaml").write_text("run: {name: demo}\n")
    make_dictionary(calibration=make_dictionary().weight.new_ones(4)).save_pretrained(run / "dictionaries" / "diffmean")
    make_dataset(run / "data", {"tiny": True})
    return run


def _locked_writers(run: Path, sources: dict, tmp_path: Path) -> dict[str, list[str]]:
    outside = make_dictionary().save_pretrained(tmp_path / "outside").parent
    data = str(run / "data")
    return {
        "eval report": ["eval", "report", str(run)],
        "infer latent --out": ["infer", "latent", "--result", str(outside), "--data", data,
                               "--out", str(run / "inference" / "latent.parquet")],
        "infer latent calibration": ["infer", "latent", "--result", str(run / "dictionaries" / "diffmean"), "--data",
                                     data, "--out", str(tmp_path / "latent.parquet")],
        "dictionary output-score": ["dictionary", "output-score", str(run / "dictionaries" / "diffmean")],
        "dictionary pull": ["dictionary", "pull", sources["dictionary"], str(run / "dictionaries" / "pulled")],
        "dictionary from-hypernet": ["dictionary", "from-hypernet", str(sources["net"]), "--concepts",
                                     str(sources["concepts"]), "--out", str(run / "dictionaries" / "hyper")],
        "data pull": ["data", "pull", sources["dataset"], str(run / "data-pulled")],
        "infer steer --out": ["infer", "steer", "--result", str(run / "dictionaries" / "diffmean"), "--data", data,
                              "--factors", "1", "--out", str(run / "inference" / "steering.parquet")],
        "eval judge --out": ["eval", "judge", str(_generations(tmp_path)), "--out",
                             str(run / "eval" / "judgements.parquet")],
    }


def _generations(tmp_path: Path) -> Path:
    path = tmp_path / "generations.parquet"
    pd.DataFrame({"method": ["diffmean"], "generation": ["text"]}).to_parquet(path)
    return path


LOCKED = ["eval report", "infer latent --out", "infer latent calibration", "dictionary output-score",
          "dictionary pull", "dictionary from-hypernet", "data pull", "infer steer --out", "eval judge --out"]


@pytest.mark.parametrize("writer", LOCKED)
def test_a_writer_into_a_locked_run_directory_refuses_naming_the_holder(sources: dict, run_dir: Path,
                                                                         tmp_path: Path, writer: str) -> None:
    args = _locked_writers(run_dir, sources, tmp_path)[writer]
    with locked_run_directory(run_dir):  # `axbench run`, still going
        before = _snapshot(run_dir)
        result = _invoke(*args)
        assert result.exit_code == 1, result.output
        assert f"The run directory {run_dir} is in use by axbench run (pid" in result.output, result.output
        assert "Traceback" not in result.output
        assert _snapshot(run_dir) == before  # nothing was written
    assert not (run_dir / LOCK_OWNER_FILE).exists()


def test_a_command_holding_the_lock_names_itself_and_the_run_directory_is_found_from_inside(run_dir: Path) -> None:
    from axeval.pipeline import RunLockedError

    assert enclosing_run_directory(run_dir / "inference" / "latent.parquet") == run_dir.resolve()
    assert enclosing_run_directory(run_dir / "dictionaries" / "diffmean" / "l0") == run_dir.resolve()
    assert enclosing_run_directory(run_dir.parent) is None
    with locked_run_directory(run_dir, "axbench eval report"):
        with pytest.raises(RunLockedError, match=r"in use by axbench eval report \(pid \d+.*then run `axbench infer "
                                                 r"latent` again"):
            with locked_run_directory(run_dir, "axbench infer latent"):
                pass
    # Released: the report goes ahead (and stops on what the run lacks, not on the lock).
    result = _invoke("eval", "report", str(run_dir))
    assert "in use by" not in result.output


def test_a_folder_with_a_config_yaml_alone_is_no_run_directory(tmp_path: Path) -> None:
    """Without stage stamps or a lock, a config.yaml of the user's does not make the folder a run to lock."""
    (tmp_path / "config.yaml").write_text("x: 1\n")
    assert enclosing_run_directory(tmp_path / "out.parquet") is None


def test_train_and_convert_refuse_an_existing_result_without_overwrite(tmp_path: Path, tiny_llama_dir: Path,
                                                                       tiny_run) -> None:
    """`train --out` and `dictionary convert-axbench` write into a layer folder l<L>: an existing one is refused
    (nothing written), --overwrite replaces it; another layer of the same folder is another result."""
    from axbench_dumps import write_axbench_dump

    data = tiny_run.run_dir / "data"  # read only: train writes to --out
    out = tmp_path / "dicts" / "diffmean"
    train = ["train", "diffmean", "--data", str(data), "--model", str(tiny_llama_dir), "--layer", "1", "--out", str(out)]
    assert _invoke(*train).exit_code == 0
    before = _snapshot(out)
    refused = _invoke(*train)
    assert refused.exit_code == 1 and "already exists" in refused.output and "--overwrite" in refused.output
    assert _snapshot(out) == before
    assert _invoke(*train, "--overwrite").exit_code == 0
    assert _invoke(*train[:-3], "0", "--out", str(out)).exit_code == 0  # layer 0 beside layer 1
    assert sorted(path.name for path in out.iterdir() if path.name.startswith("l")) == ["l0", "l1"]

    dump = write_axbench_dump(tmp_path / "dump")
    convert = ["dictionary", "convert-axbench", str(dump), str(tmp_path / "converted"), "--method", "DiffMean",
               "--base-model", "google/gemma-2-2b-it"]
    assert _invoke(*convert).exit_code == 0
    again = _invoke(*convert)
    assert again.exit_code == 1 and "already exists" in again.output
    assert _invoke(*convert, "--overwrite").exit_code == 0
