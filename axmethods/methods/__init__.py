"""Detection and steering methods: each fits the `train` split into a `SteeringDictionary`.

`METHODS` maps a method's name to its class; `get_method("DiffMean")` also accepts AxBench's class names.
"""

from __future__ import annotations

from axmethods.methods.base import (
    Method,
    MethodConfig,
    MethodConfigError,
    TrainingDataError,
    TrainingSet,
    parse_config,
)
from axmethods.methods.bow import BoW
from axmethods.methods.diffmean import DiffMean
from axmethods.methods.lat import LAT
from axmethods.methods.pca import PCA
from axmethods.methods.probe import Probe
from axmethods.methods.prompt import PromptDetection, PromptSteering
from axmethods.methods.reft_r1 import ReFTr1
from axmethods.methods.sae import SAE, SAEA
from axmethods.methods.ssv import SSV

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (DiffMean, PCA, LAT, Probe, ReFTr1, SSV, SAE, SAEA, BoW, PromptSteering, PromptDetection)
}

# AxBench's YAML names its methods by class (`getattr(axbench, name)`).
AXBENCH_NAMES = {
    "diffmean": "diffmean", "pca": "pca", "lat": "lat", "linearprobe": "probe", "lsreft": "reft-r1",
    "steeringvector": "ssv", "gemmascopesae": "sae", "gemmascopesaemaxauc": "sae-a", "bow": "bow",
    "promptsteering": "prompt-steering", "promptdetection": "prompt-detection",
}


def get_method(name: str) -> type[Method]:
    """The method class called `name` (ours, e.g. "reft-r1", or AxBench's, e.g. "LsReFT"; case-insensitive)."""
    key = name.strip().lower().replace("_", "-")
    key = AXBENCH_NAMES.get(key.replace("-", ""), key)
    if key not in METHODS:
        raise KeyError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)} (or AxBench's class names "
                       f"{', '.join(sorted(AXBENCH_NAMES))}).")
    return METHODS[key]


__all__ = ["METHODS", "Method", "MethodConfig", "MethodConfigError", "TrainingDataError", "TrainingSet",
           "get_method", "parse_config"]
