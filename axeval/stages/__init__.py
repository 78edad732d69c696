"""The benchmark's stages, in pipeline order."""

from axeval.config import AxbenchConfig
from axeval.pipeline import Stage
from axeval.stages.data import DataStage
from axeval.stages.evaluation import JudgeStage, ReportStage
from axeval.stages.llm import LLMStage
from axeval.stages.methods import LatentStage, SteeringStage, TrainStage
from axeval.stages.model import TargetModelStage
from axeval.stages.suppression import SuppressionJudgeStage, SuppressionStage


def default_stages(config: AxbenchConfig) -> list[Stage]:
    """Every stage of a run; data generation only when the run does not bring its own dataset."""
    data = [] if config.run.dataset_dir is not None else [DataStage()]
    modes = config.evaluation.modes
    steering = [SteeringStage(), JudgeStage()] if "steering" in modes or "rules" in modes else []
    suppression = [SuppressionStage(), SuppressionJudgeStage()] if config.evaluation.suppresses else []
    return [TargetModelStage(), LLMStage(), *data, TrainStage(), LatentStage(), *steering, *suppression,
            ReportStage()]


__all__ = [
    "DataStage",
    "JudgeStage",
    "LLMStage",
    "LatentStage",
    "ReportStage",
    "SteeringStage",
    "SuppressionJudgeStage",
    "SuppressionStage",
    "TargetModelStage",
    "TrainStage",
    "default_stages",
]
