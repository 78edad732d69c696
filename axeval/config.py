"""The run configuration: TRL-style section dataclasses composed into one YAML file.

A config file has one mapping per section (`run`, `model`, `llm`, …). Each section is built by the one
settings parser (`axdata.settings.build_settings`), so unknown keys are errors and every field has its
`help`. Overrides use dotted keys (`llm.max_usd=0.5`) with YAML-typed values, so `false` is a boolean,
never the truthy string "false".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axdata.errors import InputError
from axdata.generation.config import DataGenerationConfig
from axdata.hashing import content_hash
from axdata.llm.config import LLMConfig
from axdata.safe_yaml import YAMLInputError, load_yaml
from axdata.settings import SettingsError, build_settings, check_settings, parse_value
from axdata.validation import check_dataclass_numbers
from axeval.judge import JudgeConfig
from axeval.modes import EvaluationSection, check_evaluation
from axeval.protocol import check_judge_settings, check_protocol, method_settings
from axmethods.factors import AXBENCH_FACTORS
from axmethods.inference.sampling import ENGINES
from axmethods.models import TargetModelConfig, context_length
from axmethods.registry import UnknownMethodError, get_method


class ConfigError(SettingsError):
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
                          "own behaviour where restoring it is cheap (one judge ask, a parse failure = 0; token "
                          "activations rounded to 3 decimals before max-pooling; calibration fallback 50; Probe's "
                          "ignored gradient accumulation). Every difference: docs/protocol.md."},
    )

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        check_dataclass_numbers(self, "run")
        # The run directory is <output_dir>/<name>: a name must not lead anywhere else.
        if not self.name or self.name in (".", "..") or any(sep in self.name for sep in ("/", "\\", "\0")):
            raise InputError(f"run.name = {self.name!r}: must be one folder name (no '/', '\\', '.' or '..'); "
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
        metadata={"help": "Per-method settings, e.g. {reft-r1: {num_train_epochs: 3}}; `axbench train METHOD --list-settings` lists them."},
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
    positions: str = field(default="all", metadata={
        "help": "Steer 'all' positions or only 'after_prefix' (every token after the chat prefix, generated ones "
                "too); not a method's training setting intervention_positions (all | prompt)."})
    latent_batch_size: int = field(default=16, metadata={"help": "Texts per forward pass in latent inference."})
    steering_batch_size: int = field(default=32, metadata={"help": "Rows per batch in steered generation."})
    engine: str = field(
        default="eager",
        metadata={"help": "Steered-generation decoder: 'eager' (the default decode loop) or 'compiled' (a static KV "
                          "cache and a torch.compile'd step, one graph for every batch; for GPUs, same outputs). "
                          "Steerers it cannot run (adapters, fine-tuned weights, non-addition) stay eager."},
    )
    unsteered_baseline: bool = field(
        default=True, metadata={"help": "Also generate the unsteered model's answers (a factor-free reference)."}
    )

    def __post_init__(self) -> None:
        check_dataclass_numbers(self, "inference")
        if not self.factors or not all(isinstance(f, (int, float)) and math.isfinite(f) for f in self.factors):
            raise InputError(f"inference.factors = {self.factors!r}: give at least one finite number.")
        if not 0 < self.top_p <= 1:
            raise InputError(f"inference.top_p = {self.top_p!r}: must be in (0, 1].")
        if self.engine not in ENGINES:
            raise InputError(f"inference.engine = {self.engine!r}: use one of {', '.join(ENGINES)}.")


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
    "data": DataGenerationConfig,
    "methods": MethodsSection,
    "inference": InferenceSection,
    "judge": JudgeConfig,
    "evaluation": EvaluationSection,
    "report": ReportSection,
}


@dataclass
class AxbenchConfig:
    run: RunSection = field(default_factory=RunSection)
    model: TargetModelConfig = field(default_factory=TargetModelConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    data: DataGenerationConfig = field(default_factory=DataGenerationConfig)
    methods: MethodsSection = field(default_factory=MethodsSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
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
    def from_dict(cls, raw: dict[str, Any], source: str = "<config>") -> AxbenchConfig:
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
            try:
                parsed[name] = build_settings(section_cls, values, where=f"{source}: {name}")
            except SettingsError as err:
                raise ConfigError(str(err)) from None
        config = cls(**parsed)
        config._check_methods(source)
        config._check_protocol(source, raw.get("judge") or {})
        check_max_new_tokens(config.inference.max_new_tokens, config.model, f"{source}: inference.max_new_tokens")
        try:
            check_evaluation(config.evaluation, config.methods.steer, config.data, config.model,
                             config.inference.max_new_tokens, generates_data=config.run.dataset_dir is None,
                             dataset_dir=config.run.dataset_dir)
        except InputError as err:
            raise ConfigError(f"{source}: {err}") from None
        return config

    def _check_protocol(self, source: str, judge: dict[str, Any]) -> None:
        """Refuse, at load, a setting written in the config that contradicts run.protocol=reference (the switch
        governs it: axeval.protocol); the values the switch fills in are not written back here."""
        try:
            # the parsed values of the keys the file names (a YAML "0" and 0 are the same setting)
            check_judge_settings(self.run.protocol, {k: getattr(self.judge, k) for k in judge if hasattr(self.judge, k)})
            for name, values in self.methods.settings.items():
                method_settings(self.run.protocol, get_method(name).name, values or {})
        except ValueError as err:  # axeval.protocol raises plain ValueError
            raise ConfigError(f"{source}: {err}") from None

    def _check_methods(self, source: str) -> None:
        """Fail at load time, not after hours of compute, on a method name or baseline that cannot work."""
        if not all(isinstance(name, str) for name in self.methods.train):
            raise ConfigError(f"{source}: methods.train must be a list of method names, got {self.methods.train!r}.")
        for name, values in self.methods.settings.items():
            if not isinstance(name, str) or not isinstance(values, dict | None):
                raise ConfigError(f"{source}: methods.settings must map method names to their settings, e.g. "
                                  f"{{reft-r1: {{num_train_epochs: 3}}}}; got {name!r}: {values!r}.")
        names = []
        for name in self.methods.train:
            try:
                names.append(get_method(name).name)
            except UnknownMethodError as err:
                raise ConfigError(f"{source}: methods.train: {err}") from None
        for name, values in self.methods.settings.items():
            try:  # keys, types and values, before any data is generated or money spent
                spec = get_method(name)
                check_settings(spec.settings_class, values or {}, f"methods.settings.{name}")
            except UnknownMethodError as err:
                raise ConfigError(f"{source}: methods.settings: {err}") from None
            except SettingsError as err:
                hint = f" `axbench train {spec.name} --list-settings` lists them." if "has no field" in str(err) else ""
                raise ConfigError(f"{source}: {err}{hint}") from None
        steered = names
        if self.methods.steer is not None:
            try:
                steered = [get_method(name).name for name in self.methods.steer]
            except (UnknownMethodError, AttributeError) as err:
                raise ConfigError(f"{source}: methods.steer: {err}") from None
            extra = sorted(set(steered) - set(names))
            if extra:
                raise ConfigError(f"{source}: methods.steer names {extra}, which methods.train does not train; "
                                  "add them to methods.train or remove them from methods.steer.")
        baseline = self.report.baseline
        if baseline is None:
            return
        candidates = steered + (["unsteered"] if self.inference.unsteered_baseline else [])
        try:
            resolved = baseline if baseline == "unsteered" else get_method(baseline).name
        except UnknownMethodError:
            resolved = baseline
        if resolved not in candidates:
            raise ConfigError(f"{source}: report.baseline={baseline!r} is not among the evaluated methods "
                              f"{candidates}; add it to methods.train, pick one of those, or set it to null.")
        self.report.baseline = resolved

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> AxbenchConfig:
        raw: dict[str, Any] = {}
        source = "<defaults>"
        if path is not None:
            source = str(path)
            try:
                raw = load_yaml(Path(path).read_text(encoding="utf-8"), str(path)) or {}
            except FileNotFoundError:
                raise ConfigError(f"Config file {path} does not exist.") from None
            except (UnicodeDecodeError, IsADirectoryError):
                raise ConfigError(f"{path} is not a text file; a run config is YAML (see configs/paper/).") from None
            except YAMLInputError as err:  # bad syntax, or nested too deep to read
                raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the config must be a mapping of sections ({', '.join(SECTIONS)}), "
                              f"not a YAML {type(raw).__name__}.")
        return cls.from_dict(apply_overrides(raw, overrides), source)


def check_max_new_tokens(max_new_tokens: int, model: TargetModelConfig, where: str) -> None:
    """Refuse a generation length the target model's context cannot hold, from its config alone (before the model
    loads; `axmethods.models.context_length`; unknown there: not checked)."""
    limit = context_length(model)
    if limit is not None and max_new_tokens >= limit:
        raise ConfigError(f"{where} = {max_new_tokens}: the target model {model.model!r} holds {limit} tokens, the "
                          f"prompt included; use less than {limit} (the paper: 128).")


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
            result[section][name] = parse_value(value)
        except SettingsError as err:  # the key, not the whole override: the value may be huge
            raise ConfigError(f"Override {key.strip()}: {err}") from None
    return result
