"""The benchmark's stages, in pipeline order."""

from axeval.pipeline import Stage
from axeval.stages.data import DataStage
from axeval.stages.llm import LLMStage
from axeval.stages.model import TargetModelStage


def default_stages() -> list[Stage]:
    return [TargetModelStage(), LLMStage(), DataStage()]


__all__ = ["DataStage", "LLMStage", "TargetModelStage", "default_stages"]
