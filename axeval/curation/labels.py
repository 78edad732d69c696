"""Pulled human labels as a dataset folder: parquet + card + `curation.json`, pushable to the Hub.

```
<out>/data/train-00000-of-00001.parquet   one row per record × annotator (submitted responses only)
<out>/README.md                           dataset card (hub_cards/review_labels_card.md), YAML `configs:`
<out>/curation.json                       where it came from: dataset, workspace, server URL (never a key), counts
<out>/agreement.json, confusion.png       written by `axbench curate agreement`
```
Put it at `runs/<name>/curation/<dataset>/` and `axbench eval report` shows the agreement.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from huggingface_hub import HfApi

from axdata.cards import render_card
from axdata.io import atomic_path, atomic_write_json, atomic_write_text
from axeval.judge_templates import CRITERIA

logger = logging.getLogger(__name__)

LABELS_FILE = Path("data") / "train-00000-of-00001.parquet"
INFO_FILE = "curation.json"
AGREEMENT_FILE = "agreement.json"
CONFUSION_PLOT = "confusion.png"
CURATION_DIR = "curation"  # runs/<name>/curation/<dataset>/

COLUMNS = {
    "record_id": "content id of the record (the same generation always has the same id)",
    "annotator": "username of the person who answered",
    **{f"human_{c}": f"the person's {c} rating, 0–2" for c in CRITERIA},
    **{f"judge_{c}": f"the LLM judge's {c} rating, 0–2 (the suggestion shown)" for c in CRITERIA},
    "note": "the person's optional note ('' when none)",
    "instruction": "the instruction the model answered",
    "concept": "the concept it was steered towards",
    "response": "the steered generation",
    "method": "steering method", "model": "target model", "layer": "steered layer (-1: unknown)",
    "factor": "steering factor (null for factor-free methods)", "concept_id": "concept id in the run",
    "judge_model": "the judge model", "judge_agent": "suggestion agent: judge model and template hash",
}


def write_labels(labels: pd.DataFrame, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write the labels folder (see the module docstring); `info` goes to curation.json and the card."""
    out = Path(out_dir)
    frame = labels[[c for c in COLUMNS if c in labels.columns]].reset_index(drop=True)
    with atomic_path(out / LABELS_FILE) as tmp:
        frame.to_parquet(tmp, index=False)
    summary = {**info, "rows": len(frame), "records": int(frame["record_id"].nunique()) if len(frame) else 0,
               "annotators": sorted(frame["annotator"].unique().tolist()) if len(frame) else []}
    atomic_write_json(out / INFO_FILE, summary)
    size = "n<1K" if len(frame) < 1000 else "1K<n<10K" if len(frame) < 10_000 else "10K<n<100K"
    card_metadata = {"license": "cc-by-4.0", "language": ["en"], "size_categories": [size],
                     "tags": ["axbench", "argilla", "human-feedback", "llm-as-a-judge", "steering"],
                     "pretty_name": f"{info.get('dataset', 'review')} labels",
                     "configs": [{"config_name": "default", "default": True,
                                  "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]}
    atomic_write_text(out / "README.md", render_card(
        "review_labels_card.md", card_metadata=card_metadata, pretty_name=card_metadata["pretty_name"],
        dataset=info.get("dataset", ""), workspace=info.get("workspace", ""), n_rows=len(frame),
        n_records=summary["records"], n_annotators=len(summary["annotators"]),
        agents=sorted(frame["judge_agent"].unique().tolist()) if "judge_agent" in frame and len(frame) else [],
        rating_offset=info.get("rating_offset", 0), columns={c: d for c, d in COLUMNS.items() if c in frame}))
    logger.info("Wrote %d label rows (%d records) to %s", len(frame), summary["records"], out)
    return out


def read_labels(folder: str | Path) -> pd.DataFrame:
    root = Path(folder)
    shards = sorted((root / "data").glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{root} holds no data/*.parquet labels; pass a folder written by "
                                "`axbench curate fetch NAME --out DIR`.")
    return pd.concat([pd.read_parquet(path) for path in shards], ignore_index=True)


def find_curations(run_dir: str | Path) -> list[Path]:
    """The labels folders of a run: `<run>/curation/*/` holding data/*.parquet."""
    base = Path(run_dir) / CURATION_DIR
    return sorted(path for path in base.glob("*") if path.is_dir() and list((path / "data").glob("*.parquet")))


def push_labels(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload a labels folder to a Hub dataset repo (created if missing); returns the commit URL."""
    root = Path(folder)
    read_labels(root)  # proves it is a labels folder before anything is uploaded
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=root,
                               allow_patterns=["README.md", "data/*.parquet", INFO_FILE, AGREEMENT_FILE,
                                               CONFUSION_PLOT],
                               commit_message="Upload human labels (axbench curate)")
    logger.info("Pushed %s to %s: %s", root, repo_id, commit.commit_url)
    return commit.commit_url


def write_agreement(folder: str | Path) -> tuple[Any, dict[str, Path]]:
    """Compute the agreement of a labels folder; write agreement.json and confusion.png into it."""
    from axeval.curation.agreement import judge_human_agreement

    root = Path(folder)
    agreement = judge_human_agreement(read_labels(root))
    atomic_write_json(root / AGREEMENT_FILE, agreement.to_dict())
    plot = plot_confusion(agreement, root / CONFUSION_PLOT)
    return agreement, {"json": root / AGREEMENT_FILE, "plot": plot}


def plot_confusion(agreement: Any, path: Path) -> Path:
    """One 3×3 heat map per criterion (and the rounded score): judge rating (rows) × human rating (columns)."""
    from matplotlib.figure import Figure

    panels = [*agreement.criteria.items(), ("score (rounded)", agreement.score)]
    figure = Figure(figsize=(3.3 * len(panels), 3.4))
    axes = figure.subplots(1, len(panels))
    for ax, (name, stats) in zip(axes, panels):
        matrix = stats.confusion or [[0] * 3 for _ in range(3)]
        ax.imshow(matrix, cmap="Blues", vmin=0)
        for i in range(3):
            for j in range(3):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=11)
        kappa = "n/a" if stats.kappa != stats.kappa else f"{stats.kappa:.2f}"
        ax.set(xticks=range(3), yticks=range(3), xlabel="human rating", ylabel="judge rating",
               title=f"{name}\nκ_w={kappa}, exact={stats.exact:.2f}, n={stats.n}")
    figure.suptitle("Judge vs human ratings (counts)")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path
