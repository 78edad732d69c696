"""`RePSConfig`: TrainingArguments for preference-trained (RePS, BiPO) and LM-objective ("Lang.") steering.

The TrainingArguments fields keep their meaning, with two exceptions that make many concepts in one run
equal to one run per concept: `per_device_train_batch_size` counts preference pairs *per concept* per
micro-batch, and `max_grad_norm` clips each concept's gradient on its own. Defaults are the paper's RePS
rank-1 vector on Gemma-2-2B (spec §3.13); `axmethods.registry.METHODS` holds the
presets of the other methods of the family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from transformers import TrainingArguments

from axdata.errors import InputError
from axmethods.factors import VECTOR_STEER_FACTORS, VECTOR_TRAIN_FACTORS

LOSS_TYPES = ("scaled_simpo", "dpo", "lm")
PAIR_KINDS = ("orig_add", "orig_sub")
SUBTRACTION_TYPES = ("null_it_out", "negate")
POSITIONS = ("all", "prompt")



@dataclass
class RePSConfig(TrainingArguments):
    """Settings of `RePSTrainer` (RePS, BiPO and "Lang." steering). Paper defaults: RePS rank-1 vector, 2B."""

    # `training_factors` was `steering_factors`, which elsewhere names the inference grid (README, "Renamed
    # spellings and a glossary"); the settings parser still takes the old name, with one line, until the next
    # release.
    RENAMED_SETTINGS: ClassVar[dict[str, str]] = {"steering_factors": "training_factors"}

    # TrainingArguments fields with this family's defaults.
    output_dir: str | None = field(default=None, metadata={"help": "Where the Trainer writes logs and checkpoints "
                                                                   "(a temporary folder when None)."})
    learning_rate: float = field(default=0.04, metadata={"help": "AdamW learning rate (paper, RePS vector on 2B: "
                                                                 "0.04; 9B: 0.08)."})
    per_device_train_batch_size: int = field(
        default=6, metadata={"help": "Preference pairs PER CONCEPT in one micro-batch (paper: 6); each pair is "
                                     "run once per pair kind."})
    num_train_epochs: float = field(default=18.0, metadata={"help": "Passes over each concept's pairs "
                                                                     "(paper, RePS vector: 18)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Linear decay to 0, no warmup (paper)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping applied to each concept's "
                                                                "parameters separately (paper: 1.0); 0 = none."})
    logging_steps: float = field(default=0.1, metadata={"help": "Log loss and margins every N optimiser steps "
                                                                "(below 1: that fraction of all steps)."})
    save_strategy: str = field(default="no", metadata={"help": "Trainer checkpoints: 'no' (the result is "
                                                               "exported at the end) | 'steps' | 'epoch'."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator needs every "
                                                                         "column."})

    # The steering family.
    parameterisation: str = field(default="vector", metadata={"help": "vector (rank-1 steering vector → "
                                                                      "SteeringDictionary) | lora | loreft."})
    loss_type: str = field(default="scaled_simpo", metadata={
        "help": "scaled_simpo (RePS: reference-free, winning term up-weighted by the reference gap) | dpo (BiPO) | "
                "lm (\"Lang.\": cross-entropy on the concept response)."})
    preference_pairs: list[str] = field(default_factory=lambda: list(PAIR_KINDS), metadata={
        "help": "Pair kinds: orig_add (concept response preferred under +factor steering), orig_sub (own "
                "response preferred with the concept removed). lm uses orig_add only."})
    training_factors: list[float] = field(default_factory=lambda: list(VECTOR_TRAIN_FACTORS), metadata={
        "help": "Training factors; each example draws one uniformly per step (paper vector: 2..20 step 2; "
                "LoRA/LoReFT: 0.2..2.0). Not the steering factors inference uses: inference_factors."})
    subtraction_type: str = field(default="null_it_out", metadata={
        "help": "orig_sub intervention: null_it_out (vector: remove the positive projection) | negate "
                "(the intervention with −factor; LoRA/LoReFT/BiPO)."})
    simpo_scaler: float = field(default=1.0, metadata={"help": "RePS: β_w = max((ref_l − ref_w) × scaler, 1)."})
    beta: float = field(default=1.0, metadata={"help": "DPO β (BiPO: 1)."})
    layer: int | None = field(default=None, metadata={"help": "Layer of the vector intervention (output of block "
                                                              "L); required for the vector."})
    intervention_layers: list[int] | None = field(default=None, metadata={
        "help": "LoRA / LoReFT layers; None = the paper's [5, 10, 15, 20] of 26 scaled to the model's depth."})
    low_rank_dimension: int = field(default=4, metadata={"help": "Rank of LoRA / LoReFT (paper: 4); the vector is "
                                                                 "rank 1."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (rsLoRA scaling alpha/√r; paper: 32)."})
    lora_target_module: str = field(default="self_attn.o_proj", metadata={
        "help": "Module inside each decoder block that LoRA adapts (paper: o_proj)."})
    intervention_dropout: float = field(default=0.0, metadata={"help": "Dropout on the intervention "
                                                                       "(paper: 0 on 2B, 0.1 on 9B / LoRA)."})
    intervention_positions: str = field(default="all", metadata={
        "help": "all (every position, also generated tokens) | prompt (LoReFT: prompt tokens after the chat "
                "prefix in training, the prompt pass in generation)."})
    init_std: float = field(default=0.01, metadata={"help": "Std of the vector's random init."})
    train_bias: bool = field(default=True, metadata={"help": "Vector: learn the scalar b added to the factor in "
                                                             "training (dropped at inference, as in the paper)."})
    max_prompt_length: int = field(default=256, metadata={"help": "Truncate prompts (chat-templated) to N tokens."})
    max_response_length: int = field(default=512, metadata={"help": "Truncate responses to N tokens "
                                                                    "(paper output_length: 512)."})
    reference_batch_size: int = field(default=16, metadata={"help": "Sequences per no-grad forward when the "
                                                                    "reference log-likelihoods are precomputed."})
    inference_factors: list[float] = field(default_factory=lambda: list(VECTOR_STEER_FACTORS), metadata={
        "help": "The factor grid steering inference uses for this method (paper vector: 2..20, 25, 30, 40, 50)."})
    concepts_per_chunk: int = field(default=64, metadata={"help": "Concepts trained in one run; more are trained "
                                                                  "chunk by chunk (bounds memory)."})

    def __post_init__(self) -> None:
        if self.output_dir is None:
            import tempfile

            self.output_dir = tempfile.mkdtemp(prefix="axbench-reps-")
        super().__post_init__()
        _choice("loss_type", self.loss_type, LOSS_TYPES)
        _choice("subtraction_type", self.subtraction_type, SUBTRACTION_TYPES)
        _choice("intervention_positions", self.intervention_positions, POSITIONS)
        from axmethods.trainers.parameterisations import PARAMETERISATIONS

        _choice("parameterisation", self.parameterisation, PARAMETERISATIONS)
        for kind in self.preference_pairs:
            _choice("preference_pairs", kind, PAIR_KINDS)
        if not self.preference_pairs:
            raise InputError("RePSConfig.preference_pairs is empty; use orig_add and/or orig_sub.")
        if not self.training_factors:
            raise InputError("RePSConfig.training_factors is empty; give at least one training factor.")
        if self.parameterisation != "vector" and self.subtraction_type == "null_it_out":
            raise InputError(f"subtraction_type null_it_out needs a vector; {self.parameterisation} subtracts "
                             "with subtraction_type=negate.")
        if self.concepts_per_chunk < 1 or self.per_device_train_batch_size < 1:
            raise InputError("concepts_per_chunk and per_device_train_batch_size must be at least 1.")

    @property
    def steering_factors(self) -> list[float]:
        """The old name of `training_factors` (read-only), until the next release."""
        return self.training_factors

    @property
    def pair_kinds(self) -> list[str]:
        """The pair kinds actually trained (the LM objective has no rejected response: orig_add only)."""
        return ["orig_add"] if self.loss_type == "lm" else list(self.preference_pairs)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"RePSConfig.{name} = {value!r} is not one of {', '.join(allowed)}.")
