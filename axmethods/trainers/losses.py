"""Per-pair objectives of the steering family (spec §3.13); each returns one loss per pair.

`policy_*` are summed response log-likelihoods under the steered model, `ref_*` under the unsteered one,
`len_*` the response lengths in tokens. AxBench divided by the whole sequence length (prompt + response);
we use the response length, as the RePS paper's formula writes |y|.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled_simpo(policy_w: torch.Tensor, policy_l: torch.Tensor, len_w: torch.Tensor, len_l: torch.Tensor,
                 ref_w: torch.Tensor, ref_l: torch.Tensor, scaler: float = 1.0) -> torch.Tensor:
    """RePS: −log σ(β_w/|y_w| · log p(y_w) − 1/|y_l| · log p(y_l)), β_w = max((ref_l − ref_w) · scaler, 1).

    Reference-free in the policy term; the reference only sets how much the winning term counts: the less
    the unsteered model likes the winner, the harder the steered model is pushed towards it.

    >>> loss = scaled_simpo(torch.tensor([-10.0]), torch.tensor([-20.0]), torch.tensor([10]), torch.tensor([10]),
    ...                     torch.tensor([-30.0]), torch.tensor([-10.0]))
    >>> round(float(loss), 4)  # β_w = 20: −log σ(20 · −1 − (−2)) = −log σ(−18)
    18.0
    """
    beta_w = ((ref_l - ref_w) * scaler).clamp_min(1.0)
    return -F.logsigmoid(beta_w * policy_w / len_w.clamp_min(1) - policy_l / len_l.clamp_min(1))


def dpo(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
        beta: float = 1.0) -> torch.Tensor:
    """DPO (BiPO): −log σ(β · ((log p(y_w) − log p_ref(y_w)) − (log p(y_l) − log p_ref(y_l)))).

    >>> round(float(dpo(torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([-5.0]))), 4)
    0.6931
    """
    return -F.logsigmoid(beta * ((policy_w - ref_w) - (policy_l - ref_l)))


def language_modelling(policy_w: torch.Tensor, len_w: torch.Tensor) -> torch.Tensor:
    """"Lang.": the steered model's mean token cross-entropy on the concept response."""
    return -policy_w / len_w.clamp_min(1)


def per_concept_sum(values: torch.Tensor, concept: torch.Tensor, n_concepts: int) -> torch.Tensor:
    """Σ over concepts of each concept's mean over its rows: every concept's gradient is its own mean loss's."""
    totals = torch.zeros(n_concepts, device=values.device, dtype=values.dtype).index_add(0, concept, values)
    counts = torch.zeros(n_concepts, device=values.device, dtype=values.dtype).index_add(
        0, concept, torch.ones_like(values))
    return (totals / counts.clamp_min(1)).sum()
