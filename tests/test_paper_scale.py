"""Paper-scale data handling on tiny models: DiffMean trains from per-text sums (no chunk of token
activations held) with the same dictionary, and the paper-scale scripts run end to end at tiny sizes."""

from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from axdata.builders import read_concepts, read_split
from axmethods.activations import ActivationCollector
from axmethods.methods.diffmean import DiffMean

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _small_dataset(tmp_path: Path, n_concepts: int = 4) -> Path:
    memory = _script("paper_scale_memory")
    args = Namespace(train_positives=5, latent_examples=3, hard_negatives=1, imbalance_pool=12, input_words=4, output_words=12)
    memory.synthesise(tmp_path / "data", n_concepts, args)
    return tmp_path / "data"


def test_collect_sums_equals_the_token_path(tiny_target):
    texts = [tiny_target.format_transcript(f"instruction {i}", "word " * (3 + 2 * i)) for i in range(7)]
    texts.append(texts[1])  # a repeat: computed once, summed twice
    keep = [i % 3 == 0 for i in range(len(texts))]
    tokens = ActivationCollector(tiny_target, 1, batch_size=3, progress=False).collect(texts, keep=keep)
    summing = ActivationCollector(tiny_target, 1, batch_size=3, progress=False)
    sums = summing.collect_sums(texts, keep=keep)
    assert torch.equal(sums.segment_sum(), tokens.segment_sum())
    assert torch.equal(sums.lengths, tokens.lengths)
    # Kept texts stay cached as token activations: a later collect() of them makes no forward pass.
    forwarded = summing.forward_texts
    again = summing.collect([texts[0], texts[3]])
    assert summing.forward_texts == forwarded
    assert torch.equal(again.segment_sum(), tokens.select([0, 3]).segment_sum())


def test_diffmean_from_sums_equals_diffmean_from_tokens(tiny_llama_target, tmp_path):
    class TokenDiffMean(DiffMean):
        needs_tokens = True

    data = _small_dataset(tmp_path)
    config = "synthetic-l1"
    train, concepts = read_split(data, config, "train"), read_concepts(data, config)
    settings = {"activation_dtype": "model", "concepts_per_chunk": 3, "activation_batch_size": 4}
    streamed = DiffMean(settings).fit(tiny_llama_target, train, concepts, 1)
    reference = TokenDiffMean(settings).fit(tiny_llama_target, train, concepts, 1)
    assert torch.equal(streamed.weight, reference.weight)


def _fitted(tiny_llama_target, tmp_path: Path, n_concepts: int = 5):
    from axdata.concepts import Concept
    from axmethods.methods.bow import BoW

    data = _small_dataset(tmp_path, n_concepts)
    config = "synthetic-l1"
    train = read_split(data, config, "train")
    # Dictionary rows in an order that is not the concept ids' order, so parts must follow the ids.
    concepts = sorted(read_concepts(data, config), key=lambda c: (c.concept_id * 3) % n_concepts)
    assert [c.concept_id for c in concepts] != sorted(c.concept_id for c in concepts)
    assert isinstance(concepts[0], Concept)
    diffmean = DiffMean({"activation_dtype": "model"}).fit(tiny_llama_target, train, concepts, 1)
    bow = BoW().fit(tiny_llama_target, train, concepts, 1)
    return data, config, diffmean, bow


def test_latent_own_rows_keep_the_same_scores(tiny_llama_target, tmp_path):
    from axmethods.inference.latent import score_texts

    data, config, diffmean, _ = _fitted(tiny_llama_target, tmp_path)
    latent = read_split(data, config, "latent")
    texts = [tiny_llama_target.format_transcript(i, o) for i, o in zip(latent["input"], latent["output"])]
    rows = diffmean.rows(latent["concept_id"].tolist())
    (dense,) = score_texts(tiny_llama_target, [diffmean], texts, batch_size=4, progress=False)
    (own,) = score_texts(tiny_llama_target, [diffmean], texts, batch_size=4, progress=False, own_rows=[rows])
    assert own.max_act.shape == (len(texts), 1)
    picked = torch.arange(len(texts))
    assert torch.equal(own.max_act[:, 0], dense.max_act[picked, rows])
    assert torch.equal(own.max_index[:, 0], dense.max_index[picked, rows])


def test_streamed_latent_files_equal_the_frames(tiny_llama_target, tmp_path):
    import pandas as pd

    from axmethods.inference.latent import latent_inference, write_latent_inference

    data, config, diffmean, bow = _fitted(tiny_llama_target, tmp_path)
    latent, pool = read_split(data, config, "latent"), read_split(data, config, "latent_imbalance")
    for dictionaries in ([diffmean], [bow, diffmean], [diffmean, bow]):
        for mode in ("latent", "latent_imbalance"):
            frame = latent_inference(tiny_llama_target, dictionaries, latent, mode=mode, imbalance_pool=pool,
                                     batch_size=4, progress=False)
            path = tmp_path / f"{mode}.parquet"
            written = write_latent_inference(path, tiny_llama_target, dictionaries, latent, mode=mode,
                                             imbalance_pool=pool, batch_size=4, progress=False, concepts_per_part=2)
            frame.to_parquet(tmp_path / "whole.parquet", index=False)
            assert written["rows"] == len(frame)
            pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(tmp_path / "whole.parquet"))


def test_dry_run_overrides_change_sizes_only(tmp_path):
    """Every paper config loads with the dry run's overrides, keeping its methods, dtype and layer."""
    from axeval.config import AxbenchConfig

    dry_run = _script("dry_run_paper_config")
    for path in sorted((ROOT / "configs" / "paper").glob("*.yaml")):
        original = AxbenchConfig.load(path)
        sets = dry_run.overrides(path, tmp_path / "model", tmp_path, "gemma-2-2b")
        changed = AxbenchConfig.load(path, sets)
        assert changed.methods.train == original.methods.train
        assert changed.model.dtype == original.model.dtype and changed.run.layer == original.run.layer
        assert changed.run.protocol == original.run.protocol
        assert changed.data.max_concepts == 2 and changed.llm.endpoint == "embedded"
        for name, settings in changed.methods.settings.items():
            given = original.methods.settings.get(name) or {}
            assert {k: v for k, v in settings.items() if k != "num_train_epochs"} == \
                {k: v for k, v in given.items() if k != "num_train_epochs"}, name
    with pytest.raises(KeyError):
        dry_run.SHAPES["gemma-2-27b"]


@pytest.mark.slow
def test_dry_run_tiny_gemma2_every_stage(tmp_path, judging_llm):
    """The dry-run script end to end at a tiny Gemma-2 shape: every stage of the 2B-L20 paper config completes.

    In one process and at one factor: the shapes, dtypes and stages are what this checks, not the LLM's answers, so
    the stand-in LLM writes the data and judges (the script's own embedded LLM made this test take minutes; the
    embedded server's path is the demo's); the command line's fresh-process mode is the next test."""
    dry_run = _script("dry_run_paper_config")
    stand_in = [f"llm.endpoint={judging_llm.base_url}", "llm.model=gpt-4o-mini", "llm.structured_output=json_schema",
                "llm.backoff_base_s=0.0"]
    results = dry_run.dry_run(ROOT / "configs" / "paper" / "2b-l20.yaml", "tiny", tmp_path, in_process=True,
                              extra=["inference.factors=[1.0]", *stand_in])["results"]
    assert [r["stage"] for r in results] == ["build", *dry_run_stages()]
    assert all(r["status"] == "ran" for r in results[1:]), results
    assert (tmp_path / "dry-run-paper-2b-l20" / "eval" / "report.md").is_file()


@pytest.mark.slow
def test_dry_run_tiny_gemma2_suppression_config_every_stage(tmp_path, judging_llm):
    """RePS's suppression setting (configs/paper/2b-l20-reps-suppress.yaml) at a tiny Gemma-2 shape: its data
    splits, training, the suppression and attack generations, their judging and the report all run (Gemma-2 has no
    system turn: the config's defences are prepend and append)."""
    dry_run = _script("dry_run_paper_config")
    stand_in = [f"llm.endpoint={judging_llm.base_url}", "llm.model=gpt-4o-mini", "llm.structured_output=json_schema",
                "llm.backoff_base_s=0.0"]
    config = ROOT / "configs" / "paper" / "2b-l20-reps-suppress.yaml"
    results = dry_run.dry_run(config, "tiny", tmp_path, in_process=True,
                              extra=["inference.factors=[1.0]", "methods.train=[diffmean,prompt-steering]",
                                     "methods.steer=[diffmean]", "evaluation.overwrite=[postfix]", *stand_in])["results"]
    assert [r["stage"] for r in results] == ["build", "model", "llm", "data", "train", "latent", "suppression",
                                             "suppression-judge", "report"]
    assert all(r["status"] == "ran" for r in results[1:]), results
    report = (tmp_path / "dry-run-paper-2b-l20-reps-suppress" / "eval" / "report.md").read_text()
    assert "## Suppression under attack" in report


def test_dry_run_command_runs_each_stage_in_a_fresh_process(tmp_path):
    """The command as docs/benchmarks.md runs it (first stage only): build and stage each in their own process,
    their figures written to --json."""
    import json
    import subprocess

    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dry_run_paper_config.py"),
                           str(ROOT / "configs" / "paper" / "2b-l20.yaml"), "--shape", "tiny", "--work", str(tmp_path),
                           "--stages", "model", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert [r["stage"] for r in figures["results"]] == ["build", "model"] and not figures["in_process"]
    assert figures["results"][1]["status"] == "ran" and figures["results"][1]["peak_mib"] > 0
    assert "| model |" in done.stdout


def dry_run_stages() -> list[str]:
    return list(_script("dry_run_paper_config").STAGE_NAMES)
