"""Convert AxBench dictionaries (`weight.pt` [+ `bias.pt`] + `metadata.jsonl`) into steering dictionaries.

AxBench saves plain `torch.save`d tensors — `[n_concepts, d]` for the released 16K dictionaries, `[d, n]`
for some methods' `{Method}_weight.pt` — next to the concepts' `metadata.jsonl`. Its `train.py` writes a dump
`<dump>/train/` holding `{Method}_weight.pt`, `{Method}_bias.pt` and `config.json` (`model_name`, `layer`,
`component`), with the concepts in `<dump>/generate/metadata.jsonl`; both layouts convert. The orientation is read
off the concept count. Files are loaded with `torch.load(weights_only=True)`, which refuses anything but
tensors and plain containers, so a converted file never runs pickled code. Calibration can come from
AxBench's `examples/*.json` tables (`{"max_act": {concept_id: value}}`).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import torch

from axdata.concepts import ConceptFileError, load_concepts
from axmethods.dictionary import DictionaryError, SteeringDictionary

logger = logging.getLogger(__name__)

_LAYER_FOLDER = re.compile(r"l(\d+)")
AXBENCH_TRAIN_CONFIG = "config.json"  # what AxBench's train.py writes beside the weights
METADATA_FILE = "metadata.jsonl"


def convert_axbench(source: str | Path, *, method: str, base_model: str, layer: int | None = None,
                    hook_module: str | None = None, activation: str = "identity", hidden_size: int | None = None,
                    calibration_file: str | Path | None = None, base_model_revision: str | None = None
                    ) -> SteeringDictionary:
    """A `SteeringDictionary` from an AxBench folder holding `weight.pt` (or `<Method>_weight.pt`) and
    `metadata.jsonl` (there or in the dump's sibling `generate/`). `layer` defaults to the layer of AxBench's
    `config.json` in the folder, else to the folder name (`l20` → 20); `hook_module` to `model.layers.<L>`.
    `hidden_size` settles the orientation of a square matrix.
    """
    source = Path(source)
    layer = _layer(source, layer)
    concepts = _concepts(source)
    weight = _orient(_load_tensor(_find(source, method, "weight")), len(concepts), hidden_size, source)
    bias_path = _find(source, method, "bias")
    bias = _load_tensor(bias_path) if bias_path else None
    if bias is not None:
        bias = bias.reshape(-1)
        if bias.numel() != len(concepts):
            raise DictionaryError(f"{bias_path} holds {bias.numel()} values for {len(concepts)} concepts; it does not "
                                  "belong to this weight.pt.")
    calibration, info = None, {}
    if calibration_file is not None:
        calibration, info = _calibration(Path(calibration_file), [c.concept_id for c in concepts])
    return SteeringDictionary(
        weight=weight, concepts=concepts, layer=layer, hook_module=hook_module or f"model.layers.{layer}",
        base_model=base_model, method=method, base_model_revision=base_model_revision, bias=bias,
        calibration=calibration, activation=activation, calibration_info=info,
        config={"converted_from": "axbench", "source": source.name},
    )


def _layer(source: Path, given: int | None) -> int:
    """`given` (--layer), else the layer AxBench's train recorded in config.json, else a folder named `l<N>`."""
    recorded = _recorded_layer(source)
    if given is not None:
        if recorded is not None and recorded != given:
            # The weights were trained at the recorded layer: steering at another one would silently be wrong.
            raise DictionaryError(f"--layer {given} contradicts {source / AXBENCH_TRAIN_CONFIG}, which records layer "
                                  f"{recorded} for these weights; drop --layer (or pass --layer {recorded}).")
        return given
    if recorded is not None:
        return recorded
    match = _LAYER_FOLDER.fullmatch(source.name)
    if match is None:
        raise DictionaryError(f"{source}: cannot tell the layer (no {AXBENCH_TRAIN_CONFIG} with a layer, as AxBench's "
                              "train writes, and the folder is not named l<N>); pass --layer N.")
    return int(match.group(1))


def _recorded_layer(source: Path) -> int | None:
    path = source / AXBENCH_TRAIN_CONFIG
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("layer")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise DictionaryError(f"{path} is not AxBench's train config ({error!r}); expected a JSON object such as "
                              '{"model_name": ..., "layer": 20}; remove the file or fix it.') from None
    if recorded is None:
        return None
    if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 0:
        raise DictionaryError(f"{path}: layer is {recorded!r}, not a layer number; fix the file or pass --layer N.")
    return recorded


def _metadata_path(source: Path) -> Path:
    """`metadata.jsonl` beside the weights, else in `generate/` beside a dump's `train/` (where AxBench keeps it)."""
    for path in (source / METADATA_FILE, source.parent / "generate" / METADATA_FILE):
        if path.is_file():
            return path
    raise DictionaryError(f"{source} has no {METADATA_FILE} (nor has {source.parent / 'generate'}); AxBench keeps the "
                          "concepts there: point at the folder holding weight.pt and metadata.jsonl, or at a dump's "
                          "train/ beside its generate/.")


def _concepts(source: Path) -> list:
    path = _metadata_path(source)
    try:
        concepts = load_concepts(path, dedupe=False)
    except ConceptFileError as error:
        raise DictionaryError(str(error)) from None
    ids = [c.concept_id for c in concepts]
    if ids != list(range(len(ids))):
        # Row i of weight.pt is concept_id i in AxBench; anything else means the files are out of step.
        raise DictionaryError(f"{path}: concept_ids are not 0..{len(ids) - 1}, so weight rows cannot be matched to "
                              "concepts; use the metadata.jsonl that was saved with weight.pt.")
    return concepts


def _find(source: Path, method: str, kind: str) -> Path | None:
    for name in (f"{kind}.pt", f"{method}_{kind}.pt"):
        if (source / name).is_file():
            return source / name
    return None


def _load_tensor(path: Path | None) -> torch.Tensor:
    if path is None:
        raise DictionaryError("no weight.pt (or <Method>_weight.pt) in the AxBench folder; point at the folder "
                              "holding the dictionary's weight.pt and metadata.jsonl.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DictionaryError(f"{path} holds objects other than tensors and was not loaded ({error}); AxBench "
                              "dictionaries are plain tensors — re-save it with torch.save(tensor).") from None
    if isinstance(loaded, dict) and len(loaded) == 1:
        loaded = next(iter(loaded.values()))
    if not isinstance(loaded, torch.Tensor):
        raise DictionaryError(f"{path} holds a {type(loaded).__name__}, not a tensor; save the matrix itself.")
    return loaded.float()


def _orient(weight: torch.Tensor, n: int, hidden_size: int | None, source: Path) -> torch.Tensor:
    if weight.ndim != 2:
        raise DictionaryError(f"{source}: weight has shape {tuple(weight.shape)}; expected [n_concepts, d] or [d, n_concepts].")
    rows, cols = weight.shape
    if rows == cols == n and hidden_size is None:
        raise DictionaryError(f"{source}: weight is {rows}×{cols} for {n} concepts, so its orientation is ambiguous; "
                              "pass hidden_size (--hidden-size).")
    if rows == n and (hidden_size is None or cols == hidden_size):
        return weight
    if cols == n and (hidden_size is None or rows == hidden_size):
        logger.info("%s: weight stored as [d, n]; transposed to [n, d]", source)
        return weight.T.contiguous()
    raise DictionaryError(f"{source}: weight has shape {tuple(weight.shape)} but metadata.jsonl lists {n} concepts"
                          f"{f' and hidden size {hidden_size} was given' if hidden_size else ''}; the files do not "
                          "belong together.")


def _calibration(path: Path, concept_ids: list[int]) -> tuple[torch.Tensor, dict]:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))["max_act"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DictionaryError(f"{path}: not an AxBench calibration table ({error!r}); expected JSON "
                              '{"max_act": {"<concept_id>": value}}.') from None
    missing = [cid for cid in concept_ids if str(cid) not in table]
    if missing:
        raise DictionaryError(f"{path} lacks max_act for concept_ids {missing[:10]}; use the table of this dictionary.")
    values = torch.tensor([float(table[str(cid)]) for cid in concept_ids])
    return values, {"source": f"axbench table {path.name}", "statistic": "max_act"}
