"""Every kind of result, and `load_result`, which opens any of them from a folder or a Hub repo.

A method's result is one of a few typed classes, each a `ConceptResult` (`axmethods.contract`): a folder of
safetensors + `concepts.jsonl` + JSON config + a model card rendered from `hub_cards/`, identified by the `format`
its config names.

| class | module | detects (`detector`) | steers |
|---|---|---|---|
| `SteeringDictionary` | `axmethods.dictionary` | residual read-out | adds factor × calibration × row |
| `ConceptAdapters` | `axmethods.trainers.artifacts` | — | LoRA / LoReFT per concept |
| `FinetunedConcepts` | `axmethods.trainers.finetuned` | — | swaps in fine-tuned weights |
| `AttributionDetector` | `axmethods.methods.ig` | IG / IxG attribution to layer-L residuals | — |
| `BagOfWords` | `axmethods.methods.bow` | text classifier | — |
| `SteeringPrompts` | `axmethods.methods.prompt` | — | an instruction before the prompt |
| `RelevanceRater` | `axmethods.methods.prompt` | the target model rates texts | — |
| `HyperSteerResult` | `axmethods.methods.hypersteer` | — | adds factor × Δ(concept, prompt) |

The class says what a result does (`detector`, `steerer()`): nothing is chosen by keys of its config dict.
This module imports every kind, so it sits at the top of `axmethods` beside the registry (tests/test_layers.py);
the contract the kinds share (`ConceptResult`, the `Detector` / `Steerer` protocols, `DictionaryError`) is
`axmethods.contract`, a foundation, and is re-exported here for the callers that import it from this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from axmethods.contract import (
    CONFIG_FILE,
    ConceptResult,
    Detector,
    DictionaryError,
    FolderResult,
    Steerer,
    fetch,
    folder_format,
)
from axmethods.dictionary import SteeringDictionary
from axmethods.methods.bow import BagOfWords
from axmethods.methods.hypersteer import HyperSteerResult
from axmethods.methods.ig import AttributionDetector
from axmethods.methods.prompt import RelevanceRater, SteeringPrompts
from axmethods.trainers.artifacts import ConceptAdapters
from axmethods.trainers.finetuned import FinetunedConcepts

ResultT = TypeVar("ResultT", bound=ConceptResult)

__all__ = ["RESULT_KINDS", "AttributionDetector", "BagOfWords", "ConceptAdapters", "ConceptResult", "Detector", "DictionaryError",
           "FinetunedConcepts", "FolderResult", "HyperSteerResult", "RelevanceRater", "Steerer", "SteeringDictionary",
           "SteeringPrompts", "load_result"]

# Every kind, by the `format` its config.json names. A dictionary's config sits in its layer folder, not at the root,
# so a root without a known format is read as a dictionary.
RESULT_KINDS: tuple[type[ConceptResult], ...] = (SteeringDictionary, ConceptAdapters, FinetunedConcepts, BagOfWords,
                                                 SteeringPrompts, RelevanceRater, HyperSteerResult)


def load_result(repo_id_or_dir: str | Path, layer: int | None = None, *, revision: str | None = None,
                token: str | None = None) -> ConceptResult:
    """Any method's result from a folder or a Hub repo: adapters, fine-tuned weights or a steering dictionary."""
    root = fetch(repo_id_or_dir, revision=revision, token=token)
    kinds = {kind.FORMAT: kind for kind in RESULT_KINDS if kind is not SteeringDictionary}
    kind = kinds.get(folder_format(root) or "")
    if kind is not None:
        return _known_method(kind.load(root), root)
    dictionary = _known_method(SteeringDictionary.load(root, layer=layer), root)  # its config: in the layer folder
    # IG / IxG share the dictionary layout; their config's `attribution` says they detect by attribution.
    return AttributionDetector.of(dictionary) if AttributionDetector.holds(dictionary) else dictionary


def _known_method(result: ResultT, root: Path) -> ResultT:
    """`result`, once its config names a method of the registry: an unknown name (an edited or foreign file) would
    be scored, compared and published under a method nobody can reproduce."""
    from axmethods.registry import UnknownMethodError, get_method

    try:
        get_method(result.method)
    except UnknownMethodError as error:
        config = root / CONFIG_FILE
        if isinstance(result, SteeringDictionary) and not config.is_file():
            config = root / result.layer_folder / CONFIG_FILE
        raise DictionaryError(f"{config}: field 'method': {error} The file was edited or written by another tool: "
                              "re-save or re-download the result.") from None
    return result
