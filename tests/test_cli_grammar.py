"""The CLI is one grammar, `axbench <resource> <action>` (README, "Using it"): every Hub upload is `push`, every Hub
download `pull` (Argilla's verbs are `send` / `fetch`), every command that creates a Hub repo takes
`--private/--public`, results are `--result`; and every old spelling still runs this release, saying so in one line.

The commands are classified by what their code calls, not by a list kept next to them: a new command that uploads
under another name, or creates a repo without `--private/--public`, fails here. Every invocation is cheap (`--help`
or a usage error): no model loads, nothing reaches the Hub.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from axeval.cli import app
from axeval.cli.grammar import RENAMED, deprecation_line

# Calls that upload to the Hub; those among them that also create the repo (checked below against their code).
UPLOADS = ("push_dataset", "push_to_hub", "push_labels", "publish_eval_results", "publish_leaderboard",
           "push_metrics", "upload_folder", "create_commit")
CREATES_REPO = ("push_dataset", "push_to_hub", "push_labels", "publish_leaderboard", "push_metrics", "create_repo")
DOWNLOADS = ("pull_dataset", "snapshot_download", "hf_hub_download")
# Commands whose own action is elsewhere and that read their SOURCE from a folder *or* a Hub repo.
READS_A_FOLDER_OR_THE_HUB = {"curate import": "sends an exported review set to Argilla"}


def _commands() -> Iterator[tuple[str, object]]:
    """(`resource action`, click command) for every command of the app, hidden ones included."""
    def walk(group: object, prefix: str) -> Iterator[tuple[str, object]]:
        for name, command in group.commands.items():  # type: ignore[attr-defined]
            path = f"{prefix} {name}".strip()
            if hasattr(command, "commands"):
                yield from walk(command, path)
            else:
                yield path, command
    yield from walk(typer.main.get_command(app), "")


def _visible() -> dict[str, object]:
    return {path: command for path, command in _commands() if not command.hidden}  # type: ignore[attr-defined]


def _source(command: object) -> str:
    return inspect.getsource(command.callback)  # type: ignore[attr-defined]


def _calls(source: str, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if re.search(rf"\b{name}\(", source)]


def _options(command: object) -> dict[str, object]:
    return {opt: param for param in command.params for opt in (*param.opts, *param.secondary_opts)}  # type: ignore


def test_every_hub_upload_is_push_and_every_download_pull() -> None:
    commands = _visible()
    for path, command in commands.items():
        action, source = path.split()[-1], _source(command)
        assert not re.search(r"publish|upload|download", action), f"{path}: a Hub upload is `push`, a download `pull`"
        uploads = _calls(source, UPLOADS)
        if action == "push":
            assert uploads, f"{path} is named push but uploads nothing to the Hub"
        elif uploads:  # an upload besides the command's own action, on request: --push-to
            assert "--push-to" in _options(command), f"{path} uploads to the Hub ({uploads}) but is not `push`"
        downloads = _calls(source, DOWNLOADS)
        if action == "pull":
            assert downloads or ("load_result(" in source and ".save_pretrained(" in source), \
                f"{path} is named pull but downloads nothing from the Hub"
        elif downloads:
            assert path in READS_A_FOLDER_OR_THE_HUB, f"{path} downloads from the Hub ({downloads}) but is not `pull`"
    # Argilla has its own verbs, so push / pull mean only the Hub.
    assert {"curate send", "curate fetch", "curate push"} <= set(commands)
    assert not _calls(_source(commands["curate send"]), UPLOADS)
    for resource in ("data", "dictionary", "eval", "leaderboard", "metrics", "curate"):
        assert f"{resource} push" in commands


def test_every_command_that_creates_a_repo_has_private_public() -> None:
    import axdata.builders.hub
    import axeval.curation.labels
    import axeval.metrics.hub
    import axeval.publish
    import axmethods.results

    # The list above is true: each of those creates the repo it uploads to; `eval push` only commits to one.
    for function in (axdata.builders.hub.push_dataset, axmethods.results.ConceptResult.push_to_hub,
                     axeval.curation.labels.push_labels, axeval.publish.publish_leaderboard,
                     axeval.metrics.hub.push_metrics):
        assert "create_repo(" in inspect.getsource(function), function
    assert "create_repo(" not in inspect.getsource(axeval.publish.publish_eval_results)
    creating = [path for path, command in _visible().items() if _calls(_source(command), CREATES_REPO)]
    assert {"data push", "dictionary push", "leaderboard push", "metrics push", "curate push", "curate fetch",
            "curate export"} <= set(creating)
    for path in creating:
        option = _options(_visible()[path]).get("--private")
        assert option is not None and list(option.opts) == ["--private"] and \
            list(option.secondary_opts) == ["--public"], f"{path} creates a repo without --private/--public"


def test_results_are_result_and_dictionary_is_only_a_hidden_old_spelling() -> None:
    for path, command in _commands():
        old = _options(command).get("--dictionary")
        if old is not None:
            assert old.hidden and path in ("infer latent", "infer steer"), f"{path} takes --dictionary"  # type: ignore
    commands = _visible()
    for path in ("infer latent", "infer steer"):
        assert not _options(commands[path])["--result"].hidden  # type: ignore[attr-defined]


def test_every_old_command_is_hidden_and_named_in_the_readme() -> None:
    hidden = {path for path, command in _commands() if command.hidden}  # type: ignore[attr-defined]
    old_commands = {old for old in RENAMED if not old.startswith("-") and "--" not in old}
    assert hidden == old_commands
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for old, new in RENAMED.items():
        assert f"`{old}`" in readme and f"`{new}`" in readme, f"README's table of renamed spellings lacks {old}"


# (old spelling, a cheap invocation of it, the new spelling): --help or a usage error, so nothing loads.
OLD_SPELLINGS = [
    ("eval publish", ["eval", "publish", "--help"], "eval push"),
    ("eval publish-leaderboard", ["eval", "publish-leaderboard", "--help"], "leaderboard push"),
    ("eval leaderboard", ["eval", "leaderboard"], "leaderboard show"),  # missing SOURCE: a usage error
    ("eval push-metrics", ["eval", "push-metrics", "--help"], "metrics push"),
    ("curate pull", ["curate", "pull", "--help"], "curate fetch"),
    ("curate publish", ["curate", "publish"], "curate push"),
    ("curate push RUN --dataset NAME", ["curate", "push", "no-such-run", "--dataset", "review"],
     "curate send RUN --dataset NAME"),
    ("infer latent --dictionary", ["infer", "latent", "--dictionary", "d"], "infer latent --result"),
    ("infer steer --dictionary", ["infer", "steer", "--dictionary", "d", "--out", "o.parquet"],
     "infer steer --result"),
    ("leaderboard push --no-private", ["leaderboard", "push", "--no-private"], "leaderboard push --public"),
    ("metrics push --no-private", ["metrics", "push", "--no-private"], "metrics push --public"),
    ("curate push --no-private", ["curate", "push", "--no-private"], "curate push --public"),
]


@pytest.mark.parametrize("old, args, new", OLD_SPELLINGS, ids=[case[0] for case in OLD_SPELLINGS])
def test_an_old_spelling_runs_and_names_the_new_one_once(old: str, args: list[str], new: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if "is now" in line]
    assert lines == [deprecation_line(old, new)], result.stderr
    assert RENAMED[old] == new if old in RENAMED else RENAMED["--no-private"] == new.rsplit(" ", 1)[-1]
    if "--help" in args:
        assert result.exit_code == 0 and "Usage" in result.stdout
    # The new spelling says nothing of the kind.
    modern = CliRunner().invoke(app, [*new.split(" ")[:2], "--help"])
    assert modern.exit_code == 0 and "is now" not in modern.stderr


def test_the_old_curate_push_sends_to_argilla_and_the_new_one_pushes_labels(tmp_path: Path) -> None:
    old = CliRunner().invoke(app, ["curate", "push", str(tmp_path), "--dataset", "r"])
    assert old.exit_code == 1 and "eval/judgements.parquet" in old.stderr  # `curate send`'s own check
    new = CliRunner().invoke(app, ["curate", "push", str(tmp_path), "me/labels"])
    assert new.exit_code == 1 and "is now" not in new.stderr  # not a labels folder: push_labels refuses it


def test_the_old_training_factors_setting_is_read_with_one_line(caplog, monkeypatch) -> None:
    """`steering_factors` was RePSConfig's name for the training factors; it is `training_factors` now."""
    import axdata.settings
    from axmethods.registry import get_method

    monkeypatch.setattr(axdata.settings, "_RENAME_NOTED", set())
    with caplog.at_level(logging.WARNING, logger="axdata.settings"):
        first = get_method("bipo").settings({"steering_factors": [2.0, 4.0]}, layer=1)
        again = get_method("bipo").settings({"steering_factors": "[3]"}, layer=1)
    assert first.training_factors == [2.0, 4.0] and again.training_factors == [3]
    assert [r.getMessage() for r in caplog.records] == \
        ["bipo: 'steering_factors' is now 'training_factors' (the old name goes in the next release)"]
    assert get_method("bipo").settings(layer=1).training_factors == [1.0]  # the preset, under the new name
    with pytest.raises(axdata.settings.SettingsError, match="keep 'training_factors'"):
        get_method("bipo").settings({"steering_factors": [2.0], "training_factors": [3.0]}, layer=1)
