"""Kill -9 a generation run mid-way, restart it, and get exactly the rows of an uninterrupted run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from generation_helpers import RoutingServer, client_for

from axdata.builders import list_splits, read_concepts, read_split
from axdata.concepts import Concept
from axdata.generation.config import DataGenerationConfig
from axdata.generation.examples import tokenizer_truncator
from axdata.generation.pipeline import generate_dataset
from axmethods.chat_backend import TransformersChatBackend

CONCEPTS = [Concept(0, "rivers and river banks"), Concept(1, "Python list comprehensions"),
            Concept(2, "fractions in word problems"), Concept(3, "a flaky topic about the weather")]
CONFIG = {"num_of_examples": 4, "output_length": 8, "latent_num_of_examples": 4, "imbalance_factor": 3,
          "steering_num_of_examples": 4, "concept_concurrency": 1}

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from generation_helpers import client_for
    from axdata.concepts import Concept
    from axdata.generation.examples import tokenizer_truncator
    from axdata.generation.config import DataGenerationConfig
    from axdata.generation.pipeline import generate_dataset
    from axmethods.chat_backend import TransformersChatBackend
    from axmethods.models import load_target_model
    from pathlib import Path

    root = Path({root!r})
    target_model = load_target_model({model!r}, device="cpu", dtype="float32")
    llm = client_for({url!r}, root, max_concurrency=2)
    target = TransformersChatBackend(target_model, batch_size=4, cache=llm.cache, ledger=llm.ledger)
    concepts = [Concept(i, text) for i, text in {concepts!r}]
    asyncio.run(generate_dataset(concepts, DataGenerationConfig(**{config!r}), llm=llm, target=target,
                                 out_dir=root / "out", dataset_config="c", work_dir=root / "work",
                                 truncate=tokenizer_truncator(target_model.tokenizer)))
""")


def _units(root: Path) -> int:
    return len(list((root / "work").glob("*/*.json")))


def _start(root: Path, url: str, model: Path) -> subprocess.Popen:
    script = SCRIPT.format(tests=str(Path(__file__).parent), root=str(root), model=str(model), url=url,
                           concepts=[(c.concept_id, c.concept) for c in CONCEPTS], config=CONFIG)
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _kill_after(process: subprocess.Popen, root: Path, units: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _units(root) < units:
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (root / "work" / "generation_report.json").exists()


def _splits(out: Path) -> dict[str, pd.DataFrame]:
    return {split: read_split(out, "c", split) for split in list_splits(out, "c")}


@pytest.mark.timeout(300)
def test_sigkilled_run_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path, tiny_llama_dir, tiny_llama_target):
    server = RoutingServer(delay_s=0.03).start()
    try:
        reference = tmp_path / "reference"
        llm = client_for(server.base_url, reference, max_concurrency=2)
        target = TransformersChatBackend(tiny_llama_target, batch_size=4, cache=llm.cache, ledger=llm.ledger)
        asyncio.run(generate_dataset(CONCEPTS, DataGenerationConfig(**CONFIG), llm=llm, target=target,
                                     out_dir=reference / "out", dataset_config="c", work_dir=reference / "work",
                                     truncate=tokenizer_truncator(tiny_llama_target.tokenizer)))
        llm.close()
        total_units = _units(reference)

        resumed = tmp_path / "resumed"
        # Two kills: one while the first units are being made, one later on.
        for units in (1, total_units // 2):
            _kill_after(_start(resumed, server.base_url, tiny_llama_dir), resumed, units)
        final = _start(resumed, server.base_url, tiny_llama_dir)
        assert final.wait(timeout=240) == 0, final.stderr.read()[-3000:]
    finally:
        server.stop()

    expected, got = _splits(reference / "out"), _splits(resumed / "out")
    assert list(got) == list(expected) == ["train", "latent", "latent_imbalance", "steering", "preference"]
    for split in expected:
        pd.testing.assert_frame_equal(got[split], expected[split], obj=split)
    assert read_concepts(resumed / "out", "c") == read_concepts(reference / "out", "c")
    report = json.loads((resumed / "work" / "generation_report.json").read_text())
    reference_report = json.loads((reference / "work" / "generation_report.json").read_text())
    assert report["units"]["reused"] > 0 and report["units"]["made"] > 0
    assert report["units"]["made"] + report["units"]["reused"] == total_units
    assert report["steps"] == reference_report["steps"] and report["failures"] == reference_report["failures"]
