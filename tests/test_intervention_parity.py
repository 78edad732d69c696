"""One intervention arithmetic: a row steered at training time and the same row steered at inference time (same
vector, same magnitude, same positions) give the same forward, for every kind a trainer steers with.

Training side: the trainers' vector parameterisation (`VectorIntervention.applied`: RePS / BiPO / Lang. vectors,
`addition` and RePS's "null it out" = `ablate_positive`), HyperSteer's training hook (`trainers.hypersteer.adding`)
and the LM-trained rank-1 methods (`LMRank1Model` with SSV's and ReFT-r1's `intervene`). Inference side: the hook
`axmethods.inference.steering` installs (`DictionarySteerer.intervene`, `steering_hooks`). The logits must be
equal bit for bit, in fp32 and in bf16 (both sides compute in fp32 and cast the steered state back).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from axdata.concepts import Concept
from axmethods.dictionary import SteeringDictionary
from axmethods.hooks import hook_output, layer_outputs
from axmethods.inference.steering import DictionarySteerer
from axmethods.interventions import RowSteering, steering_hooks
from axmethods.methods.lm_training import LMRank1Model
from axmethods.methods.reft_r1 import ReFTr1, ReFTr1Config, topk_relu_intervention
from axmethods.methods.ssv import SSV, SSVConfig
from axmethods.models import load_target_model, pad_batch
from axmethods.trainers.hypersteer import adding
from axmethods.trainers.parameterisations import RowPlan, VectorIntervention

LAYER = 1
TEXTS = ["hello world", "Write a short poem about the sea and the sky.", "What is the capital of France?"]
EXACT = {"atol": 0.0, "rtol": 0.0}


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def target(request: pytest.FixtureRequest, tiny_llama_dir: Path):
    return load_target_model(str(tiny_llama_dir), device="cpu", dtype=request.param)


def _batch(target: Any, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    return pad_batch([target.encode(target.format_prompt(text)) for text in TEXTS], target.tokenizer.pad_token_id,
                     side)


def _logits(target: Any, context: AbstractContextManager[Any], ids: torch.Tensor, mask: torch.Tensor
            ) -> torch.Tensor:
    with torch.no_grad(), context:
        return target.model(input_ids=ids, attention_mask=mask, use_cache=False).logits


@contextmanager
def _lm_head_logits(target: Any) -> Iterator[list[torch.Tensor]]:
    """The logits of every forward inside the block, read at the LM head (for forwards that return a loss)."""
    seen: list[torch.Tensor] = []

    def read(logits: torch.Tensor, _call: Any) -> None:
        seen.append(logits.detach())

    with hook_output(target.model.get_output_embeddings(), read):
        yield seen


def _vector(target: Any, n: int = 3) -> VectorIntervention:
    generator = torch.Generator().manual_seed(3)
    vector = VectorIntervention(n, [LAYER], target.hidden_size, init_std=0.5, generator=generator)
    with torch.no_grad():
        vector.bias.copy_(torch.tensor([0.7, -0.4, 1.3]))  # a trained bias: α + b_c in training, b_c in null_it_out
    return vector


def _dictionary(target: Any, weight: torch.Tensor) -> SteeringDictionary:
    """What `export_intervention` makes of a vector: the weight, calibration 1 (α = factor)."""
    concepts = [Concept(i, f"c{i}") for i in range(weight.shape[0])]
    return SteeringDictionary(weight.detach().float().clone(), concepts, LAYER, target.residual_module_path(LAYER),
                              target.model_id, "reps", calibration=torch.ones(weight.shape[0]))


def _inference_hook(target: Any, dictionary: SteeringDictionary, kind: str, concept_ids: list[int],
                    factors: list[float]) -> AbstractContextManager[Any]:
    """The hook run_steering installs for these rows (`DictionarySteerer.intervene`)."""
    rows = pd.DataFrame({"concept_id": concept_ids, "factor": factors})
    context, _ = DictionarySteerer(dictionary, kind=kind).intervene(target, rows)
    return context


@pytest.mark.parametrize("kind", ["addition", "ablate_positive"])
def test_vector_parameterisation_steers_as_its_dictionary_rows(target, kind: str) -> None:
    """RePS's orig_add rows (α = factor + b_c) and orig_sub rows (RePS's null_it_out: ablate_positive with α = b_c)
    equal the dictionary steerer's hook with the same vectors and magnitudes."""
    vector = _vector(target)
    ids, mask = _batch(target)
    concepts, factors = [2, 0, 1], torch.tensor([2.0, -1.5, 4.0])
    subtract = kind == "ablate_positive"
    # The trainer's orig_sub plan: factor 0 and the subtract flag (reps_trainer._plan).
    plan = RowPlan(torch.tensor(concepts), torch.zeros(3) if subtract else factors,
                   subtract=torch.ones(3, dtype=torch.bool) if subtract else None)
    trained = _logits(target, vector.applied(target, plan), ids, mask)
    bias = vector.bias.detach()[concepts]
    magnitudes = bias if subtract else factors + bias
    inferred = _logits(target, _inference_hook(target, _dictionary(target, vector.weight), kind, concepts,
                                               magnitudes.tolist()), ids, mask)
    torch.testing.assert_close(trained, inferred, **EXACT)
    assert not torch.allclose(trained.float(), _logits(target, nullcontext(), ids, mask).float())  # it steers


def test_vector_parameterisation_mixes_kinds_per_row_and_trains_weight_and_bias(target) -> None:
    """One stacked batch of orig_add and orig_sub rows (as RePS trains): each row equals its own kind's inference
    forward, and the loss reaches the weight and the bias through the registry's functions."""
    vector = _vector(target)
    ids, mask = _batch(target)
    concepts, factors = [0, 1, 2], torch.tensor([3.0, 0.0, -2.0])
    subtract = torch.tensor([False, True, False])
    plan = RowPlan(torch.tensor(concepts), factors, subtract=subtract)
    trained = _logits(target, vector.applied(target, plan), ids, mask)
    dictionary, bias = _dictionary(target, vector.weight), vector.bias.detach()
    added = _logits(target, _inference_hook(target, dictionary, "addition", concepts,
                                            (factors + bias).tolist()), ids, mask)
    nulled = _logits(target, _inference_hook(target, dictionary, "ablate_positive", concepts, bias.tolist()),
                     ids, mask)
    torch.testing.assert_close(trained[~subtract], added[~subtract], **EXACT)
    torch.testing.assert_close(trained[subtract], nulled[subtract], **EXACT)

    vector.train()
    with vector.applied(target, plan):
        target.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().logsumexp(-1).sum().backward()
    assert vector.weight.grad is not None and bool((vector.weight.grad.norm(dim=1) > 0).all())
    assert vector.bias.grad is not None and bool((vector.bias.grad != 0).all())  # orig_sub's bias too
    target.model.zero_grad(set_to_none=True)


def test_hypersteer_training_hook_steers_as_its_inference_hook(target) -> None:
    """HyperSteer's `adding`: h + factor·Δ (HyperSteerSteerer's RowSteering) and, on `remove` rows, RePS's
    null_it_out (ablate_positive, α = 0)."""
    delta = torch.randn(3, target.hidden_size, generator=torch.Generator().manual_seed(5))
    factors, remove = torch.tensor([1.0, 0.6, 1.8]), torch.tensor([False, True, False])
    ids, mask = _batch(target)
    trained = _logits(target, adding(target, LAYER, delta, factors, remove), ids, mask)
    added = _logits(target, steering_hooks(target, LAYER, RowSteering(delta, factors)), ids, mask)
    nulled = _logits(target, steering_hooks(target, LAYER, RowSteering(delta, torch.zeros(3), "ablate_positive")),
                     ids, mask)
    torch.testing.assert_close(trained[~remove], added[~remove], **EXACT)
    torch.testing.assert_close(trained[remove], nulled[remove], **EXACT)
    assert not torch.equal(added[remove], nulled[remove])  # the two kinds differ on that row


@pytest.mark.parametrize("name", ["ssv", "reft-r1"])
def test_lm_trained_rank1_steers_as_after_prefix_addition(target, name: str) -> None:
    """LMRank1Model (SSV: h + w; ReFT-r1: h + m·w, m its mean top-k latent) at the non-prefix positions equals
    `steering_hooks(positions="after_prefix")` with the same rows and magnitudes."""
    method = SSV(SSVConfig()) if name == "ssv" else ReFTr1(ReFTr1Config(topk=2))
    ids, mask = _batch(target, side="right")  # as LMCollator pads
    position = torch.arange(ids.shape[1])[None]
    intervened = (position >= target.prefix_length) & (mask == 1)
    weight = torch.randn(3, target.hidden_size, generator=torch.Generator().manual_seed(7)) * 0.3
    concept_index = torch.tensor([1, 2, 0])
    model = LMRank1Model(target, LAYER, weight.clone(), method.intervene, aux_coefficient=0.01)
    labels = ids.masked_fill(mask == 0, -100)
    with _lm_head_logits(target) as seen:
        loss, _ = model(concept_index, ids, mask, labels, intervened, progress=0.5)
    trained = seen[0]
    # The inference side's magnitudes from the unsteered layer output, as a steering row would carry them.
    hidden = layer_outputs(target, [LAYER], ids, mask)[LAYER].float()
    steering, _ = method.intervene(hidden, weight[concept_index], intervened)
    assert bool((steering.magnitudes > 0).all())
    inference = RowSteering(steering.vectors.clone(), steering.magnitudes.detach().clone())
    inferred = _logits(target, steering_hooks(target, LAYER, inference, positions="after_prefix"), ids, mask)
    real = mask.bool()  # padding positions differ (after_prefix steers them) but no real token attends to them
    torch.testing.assert_close(trained[real], inferred[real], **EXACT)

    loss.backward()
    assert model.weight.grad is not None and bool((model.weight.grad.norm(dim=1) > 0).all())
    target.model.zero_grad(set_to_none=True)


def test_reft_r1_latent_is_its_own_and_the_addition_is_the_registrys() -> None:
    """ReFT-r1's intervene returns the registry's addition with m = mean top-k latent (and its L1)."""
    hidden = torch.tensor([[[3.0], [1.0], [2.0], [0.5]]])
    steering, l1 = topk_relu_intervention(hidden, torch.tensor([[1.0]]), torch.ones(1, 4, dtype=torch.bool), 2)
    assert steering.kind == "addition" and steering.magnitudes.tolist() == [2.5]
    assert l1.tolist() == [1.5 / 4]
