"""The compiled steering engine (`inference.engine: compiled`): a static KV cache and a torch.compile'd decode step
with the rows' steering deltas in a fixed buffer. Same generations as the eager loop, one graph for every batch,
eager fallback for steerers it cannot run, and the engine name validated where it is set.

torch.compile on CPU takes seconds per graph: the tests share one tiny Llama (module scope) so its graphs
(steered and unsteered) compile once for the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_inference import make_dictionary, steering_frame
from torch._dynamo.utils import counters

from axeval.config import AxbenchConfig, ConfigError
from axmethods.inference import compiled
from axmethods.inference.sampling import SamplingConfig, sample
from axmethods.inference.steering import DictionarySteerer, UnsteeredBaseline, run_steering
from axmethods.interventions import RowSteering, steering_hooks


@pytest.fixture(scope="module")
def target(tiny_llama_dir: Path):
    from axmethods.models import load_target_model

    return load_target_model(str(tiny_llama_dir), device="cpu", dtype="float32")


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_greedy_and_seeded_rows_equal_eager_and_new_concepts_and_factors_do_not_recompile(target) -> None:
    """Row 0 of a batch has delta 0 (unsteered) beside steered rows, greedy and seeded top-k rows in one batch;
    a second batch with other deltas and then one with other rows and prompt lengths run the same graph."""
    prompts = [target.encode(target.format_prompt(text)) for text in ("hello world", "Write a poem about the sea",
                                                                       "What is the capital of France?")]
    greedy = SamplingConfig(max_new_tokens=8, temperature=0)
    configs = [greedy, greedy, SamplingConfig(max_new_tokens=8, top_k=50)]
    vectors = torch.randn(3, target.hidden_size, generator=torch.Generator().manual_seed(1))
    decoder = compiled.decoder_for(target, batch_size=8, max_cache_len=64)  # the slow test's shape: its graphs
    for magnitudes in (torch.tensor([0.0, 2.0, 6.0]), torch.tensor([5.0, 0.0, 1.0])):
        steering = RowSteering(vectors, magnitudes)
        with steering_hooks(target, 1, steering):
            eager = sample(target, prompts, [0, 1, 2], configs)
        before = _graphs()
        with decoder.steering(1, magnitudes[:, None] * vectors):
            fast = sample(target, prompts, [0, 1, 2], configs, decoder)
        assert fast == eager
    assert eager != sample(target, prompts, [0, 1, 2], configs)  # (the steering changes the answers)
    assert _graphs() == before  # the second batch (other deltas) reused the first one's graph
    with decoder.steering(1, vectors[:2]):
        sample(target, prompts[1:], [3, 4], greedy, decoder)  # 2 rows, other prompt lengths: same graph
    assert _graphs() == before
    assert sample(target, prompts[:1], [0], greedy) == sample(target, prompts[:1], [0], greedy)  # no hook left behind


@pytest.mark.slow  # compiles two graphs (steered, unsteered): ~50 s on a busy 2-core CPU
def test_run_steering_compiled_equals_eager_in_mixed_batches(target, tmp_path: Path) -> None:
    """run_steering end to end: several concepts and factors (0 included) per batch, a padded last batch,
    temperature 0 and seeded top-k, and the unsteered baseline (its graph has no hook)."""
    dictionary = make_dictionary(target, n=3, layer=1, calibration=torch.tensor([2.0, 4.0, 8.0]))
    split = steering_frame(n_concepts=3, prompts=2)
    for sampling in (SamplingConfig(max_new_tokens=10, temperature=0), SamplingConfig(max_new_tokens=10, top_k=50)):
        kwargs = {"factors": [0.0, 1.0, 3.0], "sampling": sampling, "batch_size": 8, "progress": False}  # 18 rows
        eager = run_steering(target, DictionarySteerer(dictionary), split, tmp_path / "e.parquet", **kwargs)
        fast = run_steering(target, DictionarySteerer(dictionary), split, tmp_path / "c.parquet", engine="compiled",
                            **kwargs)
        assert fast["generation"].tolist() == eager["generation"].tolist()
        assert fast["magnitude"].tolist() == eager["magnitude"].tolist()
        steered, unsteered = eager[eager["factor"] == 3.0], eager[eager["factor"] == 0.0]
        assert steered["generation"].tolist() != unsteered["generation"].tolist()  # the steering does something
    baseline = {"sampling": SamplingConfig(max_new_tokens=10, temperature=0), "progress": False}
    assert run_steering(target, UnsteeredBaseline(), split, tmp_path / "u.parquet", engine="compiled", **baseline
                        )["generation"].tolist() == \
        run_steering(target, UnsteeredBaseline(), split, tmp_path / "v.parquet", **baseline)["generation"].tolist()


def test_steerers_the_buffer_cannot_express_run_eagerly_with_one_logged_line(target, tmp_path: Path,
                                                                                caplog: pytest.LogCaptureFixture) -> None:
    dictionary = make_dictionary(target, n=2, layer=0, calibration=torch.ones(2))
    split = steering_frame(n_concepts=2, prompts=1)
    kwargs = {"factors": [1.0], "sampling": SamplingConfig(max_new_tokens=4, temperature=0), "progress": False}
    clamp = DictionarySteerer(dictionary, kind="clamp")
    with caplog.at_level(logging.WARNING, logger="axmethods.inference.compiled"):
        fast = run_steering(target, clamp, split, tmp_path / "c.parquet", engine="compiled", **kwargs)
    assert [r.getMessage() for r in caplog.records] == [
        "engine compiled: DiffMean runs on the eager loop because its intervention is clamp at all positions (the "
        "buffer adds at all) (same outputs, eager speed)."]
    assert fast["generation"].tolist() == run_steering(target, clamp, split, tmp_path / "e.parquet", **kwargs
                                                       )["generation"].tolist()
    _, decoder = compiled.steering_engine("compiled", target, DictionarySteerer(dictionary, positions="after_prefix"),
                                          [5], 4, 8)
    assert decoder is None
    with pytest.raises(ValueError, match="unknown; use eager"):
        run_steering(target, clamp, split, tmp_path / "x.parquet", engine="turbo", **kwargs)


@pytest.fixture
def _no_cli_logging_afterwards():
    """`main` configures logging as an application does; the rest of the test session must not inherit it."""
    from axeval.cli import LOGGERS

    yield
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h.get_name() == "axbench-cli"]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def test_the_engine_name_is_validated_in_the_config_and_on_the_command_line(capsys, _no_cli_logging_afterwards
                                                                            ) -> None:
    assert AxbenchConfig.from_dict({"inference": {"engine": "compiled"}}).inference.engine == "compiled"
    assert AxbenchConfig.from_dict({}).inference.engine == "eager"
    with pytest.raises(ConfigError, match=r"inference.engine = 'turbo': use one of eager, compiled"):
        AxbenchConfig.from_dict({"inference": {"engine": "turbo"}})
    from axeval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "steer", "--result", "d", "--data", "x", "--out", "o.parquet", "--engine", "turbo"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == ("axbench: usage error: infer steer: inference.engine = 'turbo': use one of eager, compiled "
                           "(flag --engine).")
    assert "Traceback" not in err


@pytest.mark.slow  # a second model's graph: ~40 s on a busy CPU
def test_gemma2_sliding_window_cache_greedy_equals_eager(tiny_gemma2_dir: Path) -> None:
    """Gemma-2 (the paper's model family): hybrid sliding-window layers in the static cache, soft-capped logits."""
    from axmethods.models import load_target_model

    gemma = load_target_model(str(tiny_gemma2_dir), device="cpu", dtype="float32")
    prompts = [gemma.encode(gemma.format_prompt(text)) for text in ("hello world", "Write a poem about the sea")]
    greedy = SamplingConfig(max_new_tokens=8, temperature=0)
    steering = RowSteering(torch.randn(2, gemma.hidden_size, generator=torch.Generator().manual_seed(2)),
                           torch.tensor([0.0, 3.0]))
    with steering_hooks(gemma, 0, steering):
        eager = sample(gemma, prompts, [0, 1], greedy)
    assert compiled.cache_length(gemma, [len(p) for p in prompts], 8) == 64  # the tiny model's window
    assert isinstance(compiled.cache_length(gemma, [60], 8), str)  # beyond the window: eager
    decoder = compiled.decoder_for(gemma, batch_size=4, max_cache_len=64)
    with decoder.steering(0, steering.magnitudes[:, None] * steering.vectors):
        assert sample(gemma, prompts, [0, 1], greedy, decoder) == eager
