"""Detection and steering methods: each fits the `train` split into a `SteeringDictionary`.

Every method is an entry of the one registry, `axmethods.registry.METHODS` (`get_method("DiffMean")` also
accepts AxBench's class names); its `load()` gives the class defined here.
"""

from __future__ import annotations

from axmethods.methods.base import (
    Method,
    MethodConfig,
    MethodConfigError,
    TrainingDataError,
    TrainingSet,
)
from axmethods.methods.bow import BoW
from axmethods.methods.diffmean import DiffMean
from axmethods.methods.ig import InputXGradients, IntegratedGradients
from axmethods.methods.lat import LAT
from axmethods.methods.pca import PCA
from axmethods.methods.probe import Probe
from axmethods.methods.prompt import PromptDetection, PromptSteering
from axmethods.methods.reft_r1 import ReFTr1
from axmethods.methods.sae import SAE, SAEA
from axmethods.methods.ssv import SSV

__all__ = ["LAT", "PCA", "SAE", "SAEA", "SSV", "BoW", "DiffMean", "InputXGradients", "IntegratedGradients", "Method", "MethodConfig", "MethodConfigError",
           "Probe", "PromptDetection", "PromptSteering", "ReFTr1", "TrainingDataError", "TrainingSet"]
