"""`DataGenerationConfig`: the `data` section of a run config (TRL-style dataclass, paper defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from axdata.errors import InputError
from axdata.schema import AXBENCH_SPLITS, SPLITS

SHIPPED_POOL = "shipped"
# The reference drops many-shot attacks above 200 shots; more pairs than that would never be used.
MAX_ATTACK_SHOTS = 200
PAPER_POOLS = {
    "text": "databricks/databricks-dolly-15k",
    "code": "iamtarun/python_code_instructions_18k_alpaca",
    "math": "openai/gsm8k",
    "general": "tatsu-lab/alpaca_eval",
}


@dataclass
class DataGenerationConfig:
    """What AxBench-style data to generate, how much of it, and from which instructions."""

    concept_path: str | None = field(
        default=None,
        metadata={"help": "Concept list (.csv, .txt, .jsonl or Neuronpedia .json; see axdata.concepts); "
                  "required to generate."},
    )
    examples_path: str | None = field(
        default=None,
        metadata={"help": "Examples written by people (.jsonl, see axdata.generation.written): concepts they "
                  "cover use them instead of LLM generation for those rows; the rest is generated."},
    )
    max_concepts: int | None = field(
        default=None,
        metadata={"help": "Keep this many concepts, sampled with `seed` (AxBench: 500). None = all."},
    )
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "Name of the dataset config (folder / Hub config), e.g. gemma-2-2b-it-l20. "
                  "None = derived from the target model and the layer."},
    )
    splits: list[str] = field(
        default_factory=lambda: list(AXBENCH_SPLITS),
        metadata={"help": f"Splits to generate, any of {', '.join(SPLITS)} (default: the AxBench ones, "
                  f"{', '.join(AXBENCH_SPLITS)}). latent_imbalance needs latent; preference needs train; "
                  "suppression (blended prompts and two defence texts per concept) and attack_shots (many-shot "
                  "attack examples) are the RePS suppression data."},
    )
    num_of_examples: int = field(
        default=144,
        metadata={"help": "Training examples per concept: half positives written by the LLM, half the "
                  "shared negatives of the concept's genre (paper: 144 = 72 + 72)."},
    )
    output_length: int = field(
        default=128,
        metadata={"help": "LLM responses are truncated to this many tokens of the target model's tokenizer; "
                  "the target model answers with up to 1.5× this many tokens."},
    )
    response_max_tokens: int | None = field(
        default=None,
        metadata={"help": "max_tokens of LLM response requests. None = 1.25 × output_length: text past "
                  "output_length target tokens is cut anyway, so longer answers only cost money."},
    )
    latent_num_of_examples: int = field(
        default=36,
        metadata={"help": "Detection-eval positives and negatives per concept (paper: 36 each)."},
    )
    imbalance_factor: int = field(
        default=100,
        metadata={"help": "latent_imbalance holds latent_num_of_examples × imbalance_factor shared "
                  "negatives (paper: 100, i.e. about 1% positives)."},
    )
    math_share: float = field(
        default=0.15, metadata={"help": "Share of math instructions among detection-eval negatives."}
    )
    code_share: float = field(
        default=0.15, metadata={"help": "Share of code instructions among detection-eval negatives."}
    )
    contrast_concepts: bool = field(
        default=True,
        metadata={"help": "Generate contrast concepts and hard negatives for the detection-eval set."},
    )
    max_related_words: int = field(
        default=10, metadata={"help": "Related words asked per concept when finding contrast concepts."}
    )
    steering_num_of_examples: int = field(
        default=10,
        metadata={"help": "Steering instructions per concept; the first half selects the factor, the "
                  "second half is held out (paper: 10 = 5 + 5)."},
    )
    steering_prompts_from_llm: bool = field(
        default=False,
        metadata={"help": "Ask the LLM to write each concept's steering prompt (the prompt-steering "
                  "baseline); otherwise a fixed sentence naming the concept is stored."},
    )
    attack_shots: int = field(
        default=8,
        metadata={"help": "Many-shot attack examples (question/answer pairs that carry the concept) written per "
                  f"concept for the attack_shots split: the largest many-shot n a run can use (at most "
                  f"{MAX_ATTACK_SHOTS})."},
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed of concept sampling, instruction sampling and per-request sampling seeds."},
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of LLM responses."})
    max_reasks: int = field(
        default=2,
        metadata={"help": "Re-asks (each a new sample) of an LLM answer that is empty, refused or "
                  "unparseable; what still fails is listed in generation_report.json."},
    )
    text_instructions: str = field(
        default=SHIPPED_POOL,
        metadata={"help": "Text instruction pool: 'shipped' (small, written for the demo), a Hub dataset id "
                  f"(paper: {PAPER_POOLS['text']}) or a local .jsonl/.json/.csv/.parquet file."},
    )
    code_instructions: str = field(
        default=SHIPPED_POOL,
        metadata={"help": f"Code instruction pool (paper: {PAPER_POOLS['code']}); see text_instructions."},
    )
    math_instructions: str = field(
        default=SHIPPED_POOL,
        metadata={"help": f"Math instruction pool (paper: {PAPER_POOLS['math']}); see text_instructions."},
    )
    steering_instructions: str = field(
        default=SHIPPED_POOL,
        metadata={"help": f"Steering instruction pool (paper: {PAPER_POOLS['general']}); see "
                  "text_instructions."},
    )
    pool_size: int = field(
        default=1000,
        metadata={"help": "Rows per pool split from a dataset: train = the first pool_size, test = the next."},
    )
    concept_concurrency: int = field(
        default=4, metadata={"help": "Concepts generated at once (the LLM client bounds requests itself)."}
    )
    target_batch_size: int = field(
        default=8, metadata={"help": "Batch size of the target model answering (shared negatives, losing outputs)."}
    )

    def __post_init__(self) -> None:
        unknown = [split for split in self.splits if split not in SPLITS]
        if unknown:
            raise InputError(f"DataGenerationConfig.splits has unknown split(s) {unknown}; use any of {', '.join(SPLITS)}.")
        if "latent_imbalance" in self.splits and "latent" not in self.splits:
            raise InputError("DataGenerationConfig.splits: latent_imbalance is drawn from latent's negatives; "
                             "add 'latent' to splits.")
        if "preference" in self.splits and "train" not in self.splits:
            raise InputError("DataGenerationConfig.splits: preference pairs are built on train positives; "
                             "add 'train' to splits.")
        for name in ("num_of_examples", "output_length", "latent_num_of_examples", "imbalance_factor",
                     "steering_num_of_examples", "pool_size", "concept_concurrency", "target_batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"DataGenerationConfig.{name}={getattr(self, name)!r} must be at least 1.")
        if not 1 <= self.attack_shots <= MAX_ATTACK_SHOTS:
            raise InputError(f"DataGenerationConfig.attack_shots={self.attack_shots!r} must be between 1 and "
                             f"{MAX_ATTACK_SHOTS} (the largest many-shot attack a run uses); set it to the largest n "
                             "of the attack grid.")
        if self.num_of_examples < 2:
            raise InputError(f"DataGenerationConfig.num_of_examples={self.num_of_examples} must be at least 2 "
                             "(half positives, half negatives).")
        if self.max_reasks < 0 or self.max_related_words < 0:
            raise InputError("DataGenerationConfig.max_reasks and max_related_words must be 0 or more.")
        if not (0 <= self.math_share and 0 <= self.code_share and self.math_share + self.code_share <= 1):
            raise InputError(f"DataGenerationConfig.math_share={self.math_share} and code_share={self.code_share} "
                             "must be ≥ 0 and sum to at most 1.")
        if self.response_max_tokens is not None and self.response_max_tokens < 1:
            raise InputError(f"DataGenerationConfig.response_max_tokens={self.response_max_tokens} must be ≥ 1 or None.")
        if self.temperature < 0:
            raise InputError(f"DataGenerationConfig.temperature={self.temperature} must be 0 or more.")

    @property
    def positives_per_concept(self) -> int:
        return self.num_of_examples // 2

    @property
    def llm_max_tokens(self) -> int:
        return self.response_max_tokens or max(1, int(1.25 * self.output_length))

    @property
    def target_max_tokens(self) -> int:
        return int(1.5 * self.output_length)

    def pool_sources(self) -> dict[str, str]:
        return {"text": self.text_instructions, "code": self.code_instructions, "math": self.math_instructions,
                "general": self.steering_instructions}
