"""The run configuration: TRL-style section dataclasses composed into one YAML file.

A config file has one mapping per section (`run`, `model`, `llm`, …). Each section is parsed by
`transformers.HfArgumentParser` into its dataclass, so unknown keys are errors and every field has
its `help`. Overrides use dotted keys (`llm.max_usd=0.5`) with YAML-typed values, so `false` is a
boolean, never the truthy string "false".
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from transformers import HfArgumentParser

from axdata.llm.config import LLMConfig
from axdata.generation.generation_config import GenerationConfig
from axdata.hashing import content_hash
from axdata.validation import check_dataclass_numbers, check_numbers
from axeval.judge import JudgeConfig
from axeval.protocol import check_protocol
from axmethods.inference.steering import AXBENCH_FACTORS
from axmethods.models import TargetModelConfig
from axmethods.trainers.presets import canonical_method_name, setting_names


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file, the key and the fix."""


@dataclass
class RunSection:
    name: str = field(default="demo", metadata={"help": "Run name: the run directory is <output_dir>/<name>."})
    output_dir: str = field(default="runs", metadata={"help": "Folder that holds run directories."})
    seed: int = field(default=42, metadata={"help": "Global seed; per-row seeds derive from it."})
    layer: int = field(
        default=12,
        metadata={"help": "Decoder layer whose residual stream (output of block L, 0-indexed) is read and steered."},
    )
    dataset_dir: str | None = field(
        default=None,
        metadata={"help": "Use this dataset directory (from `axbench data import|pull|generate`) instead of "
                          "generating data in the run; `data.dataset_config` picks its config."},
    )
    protocol: str = field(
        default="fixed",
        metadata={"help": "'fixed': AxBench's protocol with its known bugs fixed (default); 'reference': AxBench's "
                          "own behaviour where restoring it is cheap (parse failure = 0, calibration fallback 50, "
                          "Probe's ignored gradient accumulation). Every difference: docs/protocol.md."},
    )

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        check_dataclass_numbers(self, "run")
        # The run directory is <output_dir>/<name>: a name must not lead anywhere else.
        if not self.name or self.name in (".", "..") or any(sep in self.name for sep in ("/", "\\", "\0")):
            raise ValueError(f"run.name = {self.name!r}: must be one folder name (no '/', '\\', '.' or '..'); "
                             "put the location in run.output_dir.")


@dataclass
class MethodsSection:
    train: list[str] = field(
        default_factory=lambda: ["diffmean", "reft-r1", "prompt-steering"],
        metadata={"help": "Methods to train and evaluate (axmethods.methods.METHODS names, AxBench class names, or "
                          "trained steering methods: reps, bipo, lang-vector, lora, loreft, sft, ...)."},
    )
    settings: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "Per-method config overrides, e.g. {reft-r1: {epochs: 3}}."},
    )
    steer: list[str] | None = field(
        default=None,
        metadata={"help": "Methods whose dictionaries go through steering and the judge (a subset of train; "
                          "the rest are evaluated on detection only, as AxBench's inference model list). "
                          "None = every method that can steer."},
    )


@dataclass
class InferenceSection:
    factors: list[float] = field(
        default_factory=lambda: list(AXBENCH_FACTORS),
        metadata={"help": "Steering factors (× each concept's calibration); default AxBench's 14: 0.2 … 2.0 "
                          "(step 0.2), 2.5, 3.0, 4.0, 5.0. Methods with their own grid (RePS family) use theirs."},
    )
    max_new_tokens: int = field(default=128, metadata={"help": "New tokens per steered generation (paper: 128)."})
    temperature: float = field(default=1.0, metadata={"help": "Steering sampling temperature (paper: 1.0)."})
    top_k: int = field(default=50, metadata={"help": "Sample steered generations from the k most likely tokens; "
                                                      "AxBench's HF generate() default is 50; 0 = full vocabulary."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of steered generations (1 = off)."})
    intervention: str = field(default="addition", metadata={"help": "addition | clamp | subtract_add | threshold."})
    positions: str = field(default="all", metadata={"help": "Steer 'all' positions or only 'after_prefix'."})
    latent_batch_size: int = field(default=16, metadata={"help": "Texts per forward pass in latent inference."})
    steering_batch_size: int = field(default=32, metadata={"help": "Rows per batch in steered generation."})
    unsteered_baseline: bool = field(
        default=True, metadata={"help": "Also generate the unsteered model's answers (a factor-free reference)."}
    )

    def __post_init__(self) -> None:
        check_dataclass_numbers(self, "inference")
        if not self.factors or not all(isinstance(f, (int, float)) and math.isfinite(f) for f in self.factors):
            raise ValueError(f"inference.factors = {self.factors!r}: give at least one finite number.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"inference.top_p = {self.top_p!r}: must be in (0, 1].")


@dataclass
class ReportSection:
    baseline: str | None = field(
        default="prompt-steering",
        metadata={"help": "Method that winrates are computed against (paper: SAE); null skips winrates."},
    )
    suppression: bool = field(default=False, metadata={"help": "Score concept suppression (inverted concept score)."})
    n_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95% CIs."})
    note: str | None = field(
        default=None,
        metadata={"help": "One line on what this run is (and is not) evidence of; it heads the report and the "
                          "summary (the demo says its numbers are small-model numbers)."},
    )
    dataset_id: str | None = field(
        default=None, metadata={"help": "Hub dataset repo named in .eval_results (default: the repo the run's data "
                                         "was pulled from, with its commit; neither: no .eval_results)."}
    )

    def __post_init__(self) -> None:
        check_dataclass_numbers(self, "report")


SECTIONS: dict[str, type] = {
    "run": RunSection,
    "model": TargetModelConfig,
    "llm": LLMConfig,
    "data": GenerationConfig,
    "methods": MethodsSection,
    "inference": InferenceSection,
    "judge": JudgeConfig,
    "report": ReportSection,
}


@dataclass
class AxbenchConfig:
    run: RunSection = field(default_factory=RunSection)
    model: TargetModelConfig = field(default_factory=TargetModelConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    data: GenerationConfig = field(default_factory=GenerationConfig)
    methods: MethodsSection = field(default_factory=MethodsSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    report: ReportSection = field(default_factory=ReportSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def section_hash(self, *names: str) -> str:
        return content_hash({name: dataclasses.asdict(getattr(self, name)) for name in names})

    def hash(self) -> str:
        # The output folder and run name say where results go, not what they are.
        content = self.to_dict()
        content["run"] = {k: v for k, v in content["run"].items() if k not in ("name", "output_dir")}
        return content_hash(content)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<config>") -> "AxbenchConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the config must be a mapping of sections ({', '.join(SECTIONS)}).")
        unknown = sorted(set(raw) - set(SECTIONS) - {"hashes"})
        if unknown:
            raise ConfigError(
                f"{source}: unknown section(s) {unknown}; valid sections are {', '.join(SECTIONS)}."
            )
        parsed = {}
        for name, section_cls in SECTIONS.items():
            values = raw.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {name!r} must be a mapping, got {type(values).__name__}.")
            _check_types(section_cls, values, f"{source}: {name}")
            try:
                (parsed[name],) = HfArgumentParser(section_cls).parse_dict(values, allow_extra_keys=False)
            except ValueError as err:
                message = str(err).rstrip(".")
                if "not used by the HfArgumentParser" in message:  # unknown keys: list the valid ones
                    valid = ", ".join(f.name for f in dataclasses.fields(section_cls))
                    message += f". Valid keys: {valid}"
                raise ConfigError(f"{source}: section {name!r}: {message}.") from None
        config = cls(**parsed)
        config._check_methods(source)
        return config

    def _check_methods(self, source: str) -> None:
        """Fail at load time, not after hours of compute, on a method name or baseline that cannot work."""
        if not all(isinstance(name, str) for name in self.methods.train):
            raise ConfigError(f"{source}: methods.train must be a list of method names, got {self.methods.train!r}.")
        for name, values in self.methods.settings.items():
            if not isinstance(name, str) or not isinstance(values, dict | None):
                raise ConfigError(f"{source}: methods.settings must map method names to their settings, e.g. "
                                  f"{{reft-r1: {{epochs: 3}}}}; got {name!r}: {values!r}.")
        names = []
        for name in self.methods.train:
            try:
                names.append(canonical_method_name(name))
            except KeyError as err:
                raise ConfigError(f"{source}: methods.train: {err.args[0]}") from None
        for name, values in self.methods.settings.items():
            try:
                unknown = sorted(set(values or {}) - setting_names(name))
            except KeyError as err:
                raise ConfigError(f"{source}: methods.settings: {err.args[0]}") from None
            if unknown:
                raise ConfigError(f"{source}: methods.settings.{name} has no field(s) {unknown}; "
                                  f"`axbench train {name} --set help=1` lists them.")
            try:  # values too, before any data is generated or money spent
                check_numbers(values or {}, f"methods.settings.{name}")
            except ValueError as err:
                raise ConfigError(f"{source}: {err}") from None
        steered = names
        if self.methods.steer is not None:
            try:
                steered = [canonical_method_name(name) for name in self.methods.steer]
            except (KeyError, TypeError) as err:
                raise ConfigError(f"{source}: methods.steer: {err.args[0]}") from None
            extra = sorted(set(steered) - set(names))
            if extra:
                raise ConfigError(f"{source}: methods.steer names {extra}, which methods.train does not train; "
                                  "add them to methods.train or remove them from methods.steer.")
        baseline = self.report.baseline
        if baseline is None:
            return
        candidates = steered + (["unsteered"] if self.inference.unsteered_baseline else [])
        try:
            resolved = baseline if baseline == "unsteered" else canonical_method_name(baseline)
        except KeyError:
            resolved = baseline
        if resolved not in candidates:
            raise ConfigError(f"{source}: report.baseline={baseline!r} is not among the evaluated methods "
                              f"{candidates}; add it to methods.train, pick one of those, or set it to null.")
        self.report.baseline = resolved

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> "AxbenchConfig":
        raw: dict[str, Any] = {}
        source = "<defaults>"
        if path is not None:
            source = str(path)
            try:
                raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except FileNotFoundError:
                raise ConfigError(f"Config file {path} does not exist.") from None
            except (UnicodeDecodeError, IsADirectoryError):
                raise ConfigError(f"{path} is not a text file; a run config is YAML (see configs/paper/).") from None
            except yaml.YAMLError as err:
                raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the config must be a mapping of sections ({', '.join(SECTIONS)}), "
                              f"not a YAML {type(raw).__name__}.")
        return cls.from_dict(apply_overrides(raw, overrides), source)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `section.key=value` override set (value parsed as YAML)."""
    result = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for override in overrides:
        key, sep, value = override.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"Override {override!r} must look like section.key=value, e.g. llm.max_usd=0.5.")
        if section not in SECTIONS:
            raise ConfigError(f"Override {override!r}: unknown section {section!r}; valid: {', '.join(SECTIONS)}.")
        result.setdefault(section, {})
        if not isinstance(result[section], dict):
            raise ConfigError(f"Override {override!r}: section {section!r} of the config is not a mapping.")
        try:
            result[section][name] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"Override {override!r}: the value is not valid YAML ({err}); quote text values, "
                              "e.g. run.name='my run'.") from None
    return result


def _check_types(section_cls: type, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(section_cls)
    for key, value in values.items():
        if key not in hints:
            continue  # HfArgumentParser reports unknown keys with the valid ones
        if not _matches(value, hints[key]):
            raise ConfigError(f"{where}.{key}: expected {_type_name(hints[key])}, got {value!r}.")
        # YAML writes 1 for 1.0; a float field should hold a float.
        if isinstance(value, int) and not isinstance(value, bool) and _allows(hints[key], float) \
                and not _allows(hints[key], int):
            values[key] = float(value)


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _allows(annotation: Any, kind: type) -> bool:
    return any(member is kind for member in _members(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    for member in _members(annotation):
        origin = typing.get_origin(member) or member
        if member is type(None) and value is None:
            return True
        if origin is typing.Literal and value in typing.get_args(member):
            return True
        if origin is bool and isinstance(value, bool):
            return True
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if origin is str and isinstance(value, str):
            return True
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            return True
        if origin is dict and isinstance(value, dict):
            return True
        if origin is typing.Any:
            return True
    return False


def _type_name(annotation: Any) -> str:
    return " or ".join(getattr(m, "__name__", str(m)) for m in _members(annotation))
