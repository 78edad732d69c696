"""The benchmark's stages, in pipeline order."""

from axeval.config import AxbenchConfig
from axeval.pipeline import Stage
from axeval.stages.data import DataStage
from axeval.stages.evaluation import JudgeStage, ReportStage
from axeval.stages.llm import LLMStage
from axeval.stages.methods import LatentStage, SteeringStage, TrainStage
from axeval.stages.model import TargetModelStage


def default_stages(config: AxbenchConfig) -> list[Stage]:
    """Every stage of a run; data generation only when the run does not bring its own dataset."""
    data = [] if config.run.dataset_dir is not None else [DataStage()]
    return [TargetModelStage(), LLMStage(), *data, TrainStage(), LatentStage(), SteeringStage(), JudgeStage(),
            ReportStage()]


__all__ = ["DataStage", "JudgeStage", "LLMStage", "LatentStage", "ReportStage", "SteeringStage", "TargetModelStage",
           "TrainStage", "default_stages"]
