"""A tiny AxBench training dump in the reference's layout, for the conversion tests and the README's command.

AxBench's `train.py` (stanfordnlp/axbench) writes `<dump>/train/{Method}_weight.pt`, `{Method}_bias.pt` and
`config.json` (`model_name`, `layer`, `component`); the concepts stay where its generate step put them,
`<dump>/generate/metadata.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_axbench_dump(dump: Path, *, method: str = "DiffMean", n_concepts: int = 3, hidden_size: int = 16,
                       layer: int | None = 20, model_name: str = "google/gemma-2-2b-it") -> Path:
    """Write the dump; returns its `train/` folder. `layer=None` leaves the layer out of config.json."""
    train, generate = dump / "train", dump / "generate"
    train.mkdir(parents=True)
    generate.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    torch.save(torch.randn(n_concepts, hidden_size, generator=generator), train / f"{method}_weight.pt")
    torch.save(torch.zeros(n_concepts), train / f"{method}_bias.pt")
    config = {"model_name": model_name, "component": "res", **({"layer": layer} if layer is not None else {})}
    (train / "config.json").write_text(json.dumps(config))
    lines = [json.dumps({"concept_id": i, "concept": f"concept {i}", "ref": f"https://np/{i}",
                         "concept_genres_map": {f"concept {i}": ["text"]}}) for i in range(n_concepts)]
    (generate / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return train
