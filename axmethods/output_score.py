"""Output score of a residual direction (Arad, Mueller & Belinkov 2025, "SAEs Are Good for Steering – If You
Select the Right Features"): does adding the direction make the model *say* what the direction stands for?

For a direction v at layer L (an SAE feature's decoder row, or any rank-1 dictionary row):

1. its logit-lens tokens: the top-k tokens of unembed(final_norm(v)) (k = 20);
2. one forward pass on a neutral prompt ("From my experience,", tokenized as plain text, no chat template) with
   scale × v added to the output of block L at the last token only;
3. p = the largest next-token probability among those k tokens after the intervention, r = the rank of that
   token in the whole next-token distribution (0 = most likely); the score is p × (1 − r / vocab_size).

A high score means the direction pushes the model's next token towards its own logit-lens tokens: an "output
feature". The paper keeps SAE features whose score is at least 0.01 (`THRESHOLD`).

The scale follows the paper for SAE features: `AMPLIFICATION` (10) × the largest activation of any SAE feature at
the prompt's last token, the same for every feature of the SAE (`sae_amplification`). For other dictionaries there
is no SAE to read, so a row is amplified by 10 × its own calibration (the concept's max activation): the score at
steering factor 10 (`dictionary_output_scores`; docs/protocol.md).

Directions are scored in batches (one prompt copy per direction, each with its own intervention); batching does
not change any score (tested).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub.utils import tqdm

from axdata.errors import InputError
from axmethods.hooks import Call, hook_output, layer_outputs
from axmethods.interventions import RowSteering

if TYPE_CHECKING:
    import pandas as pd

    from axmethods.dictionary import SteeringDictionary
    from axmethods.models import TargetModel

logger = logging.getLogger(__name__)

NEUTRAL_PROMPT = "From my experience,"
AMPLIFICATION = 10.0
LOGIT_LENS_TOP_K = 20
THRESHOLD = 0.01  # the paper keeps features with output score >= 0.01


@dataclass(frozen=True)
class OutputScoreSettings:
    """How output scores are measured (the paper's values by default); stored with the scores."""

    prompt: str = NEUTRAL_PROMPT
    amplification: float = AMPLIFICATION
    top_k: int = LOGIT_LENS_TOP_K
    batch_size: int = 64

    def info(self, **extra: Any) -> dict[str, Any]:
        return {"prompt": self.prompt, "amplification": self.amplification, "logit_lens_top_k": self.top_k,
                "threshold": THRESHOLD, **extra}


def prompt_ids(target: TargetModel, prompt: str = NEUTRAL_PROMPT) -> torch.Tensor:
    """[1, T] ids of the neutral prompt as plain text, with the tokenizer's own special tokens (Gemma's <bos>),
    as the paper's `tokenizer(sentence)` does."""
    return torch.tensor([target.tokenizer(prompt)["input_ids"]], dtype=torch.long)


def final_norm(target: TargetModel) -> torch.nn.Module:
    norm = getattr(target.model.base_model, "norm", None)
    if norm is None:
        raise InputError(f"{target.spec!r} has no final norm at base_model.norm; output scores need the "
                         "decoder's last norm for the logit lens (Llama / Gemma / Qwen layouts have one).")
    return norm


@torch.inference_mode()
def logit_lens_tokens(target: TargetModel, directions: torch.Tensor, top_k: int = LOGIT_LENS_TOP_K) -> torch.Tensor:
    """[n, top_k] ids of each direction's top tokens under final norm → unembedding."""
    weight = target.model.get_output_embeddings().weight
    normed = final_norm(target)(directions.to(device=weight.device, dtype=weight.dtype)[:, None, :])[:, 0]
    return (normed @ weight.T).float().topk(top_k, dim=-1).indices.cpu()


@torch.inference_mode()
def sae_amplification(target: TargetModel, layer: int, encode: Any, settings: OutputScoreSettings | None = None
                      ) -> float:
    """The paper's scale for every feature of an SAE: amplification × the largest SAE activation at the neutral
    prompt's last token (`encode`: residual [tokens, d] → activations [tokens, z])."""
    settings = settings or OutputScoreSettings()
    ids = prompt_ids(target, settings.prompt)
    hidden = layer_outputs(target, [layer], ids, torch.ones_like(ids))[layer][0, -1:]
    return settings.amplification * float(encode(hidden.float()).max().clamp(min=0))


@torch.inference_mode()
def output_scores(target: TargetModel, layer: int, directions: torch.Tensor, scales: torch.Tensor | float,
                  settings: OutputScoreSettings | None = None, *, progress: bool = False) -> torch.Tensor:
    """[n] output score of each row of `directions` [n, d] added with `scales` ([n] or one number) at `layer`.

    A zero row scores 0: it has no logit-lens tokens and changes nothing.
    """
    settings = settings or OutputScoreSettings()
    directions = directions.detach().float()
    n = directions.shape[0]
    scales = torch.as_tensor(scales, dtype=torch.float32).expand(n) if not torch.is_tensor(scales) or \
        scales.ndim == 0 else scales.detach().float()
    ids = prompt_ids(target, settings.prompt)
    scores = torch.zeros(n)
    starts = range(0, n, settings.batch_size)
    for start in tqdm(starts, desc="output scores", unit="batch", disable=not progress or len(starts) < 2):
        rows = slice(start, min(start + settings.batch_size, n))
        scores[rows] = _score_batch(target, layer, directions[rows], scales[rows], ids, settings.top_k)
    scores[directions.norm(dim=1) == 0] = 0.0
    return scores


def _score_batch(target: TargetModel, layer: int, directions: torch.Tensor, scales: torch.Tensor,
                 ids: torch.Tensor, top_k: int) -> torch.Tensor:
    lens = logit_lens_tokens(target, directions, top_k)  # [b, k]
    steering = RowSteering(directions.to(target.device), scales.to(target.device))  # the registry's addition
    batch = ids.expand(len(directions), -1).to(target.device)
    last_token = torch.zeros(batch.shape, dtype=torch.bool, device=target.device)
    last_token[:, -1] = True

    def add_at_last_token(hidden: torch.Tensor, _call: Call) -> torch.Tensor:
        return steering.apply(hidden, last_token)

    with hook_output(target.residual_module(layer), add_at_last_token):
        logits = target.model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False).logits[:, -1]
    probs = logits.float().softmax(-1).cpu()  # [b, V]
    best = probs.gather(1, lens).max(1).values  # the most likely logit-lens token's probability
    rank = (probs > best[:, None]).sum(1).float()  # 0-based rank of that token
    return best * (1 - rank / probs.shape[1])


def dictionary_output_scores(target: TargetModel, dictionary: SteeringDictionary,
                             settings: OutputScoreSettings | None = None, *, progress: bool = False
                             ) -> SteeringDictionary:
    """A copy of a calibrated rank-1 dictionary carrying every row's output score (row × calibration × 10)."""
    from axmethods.dictionary import DictionaryError

    settings = settings or OutputScoreSettings()
    if dictionary.calibration is None:
        raise DictionaryError(f"The {dictionary.method} dictionary has no calibration, which sets how far each row is "
                              "amplified for its output score; run `axbench infer latent --result DIR --data DATA` "
                              "first (it calibrates the dictionary in place).")
    dictionary.check_model(target)
    scores = output_scores(target, dictionary.layer, dictionary.steering_vectors,
                           settings.amplification * dictionary.calibration, settings, progress=progress)
    return dictionary.with_output_scores(scores, settings.info(scale="amplification × calibration"))


def threshold_mask(scores: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """The features the paper keeps: output score >= threshold."""
    return scores >= threshold


def run_output_scores(dictionaries_dir: Path) -> pd.DataFrame | None:
    """Every output score stored in a run's dictionaries (`<run>/dictionaries/<method>/l<layer>/`), one row per
    (method, concept): output_score and whether the concept is steered (False: an output-score filter dropped
    it). None when no dictionary has scores."""
    import json

    import pandas as pd
    from safetensors.numpy import load_file

    frames = []
    for weights in sorted(Path(dictionaries_dir).glob("*/l*/weights.safetensors")):
        tensors = load_file(str(weights))
        if "output_score" not in tensors or "concept_ids" not in tensors:
            continue
        config = json.loads((weights.parent / "config.json").read_text(encoding="utf-8"))
        dropped = set(config.get("unsteered_concept_ids", []))
        ids = tensors["concept_ids"].tolist()
        frames.append(pd.DataFrame({"method": config["method"], "concept_id": ids,
                                    "output_score": tensors["output_score"].astype(float),
                                    "steered": [cid not in dropped for cid in ids]}))
    return pd.concat(frames, ignore_index=True) if frames else None
