"""Residual-stream read-out that stops the forward pass after the last layer it needs.

Detection only needs the output of block L, so running the later blocks and the lm_head (a
[tokens, vocab] matmul, the largest one in small models) is wasted work: a hook on the deepest block
raises a private exception once every wanted output has been captured.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from axmethods.models import TargetModel


class _StopForward(Exception):
    """Raised from a hook once every requested layer output is captured; never escapes this module."""


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` [B, T] for token-id lists, padded on `side` ("left" or "right")."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side {side!r} is unknown; use 'left' or 'right'")
    lengths = torch.tensor([len(sequence) for sequence in sequences])
    width = int(lengths.max())
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    positions = torch.arange(width)[None, :]
    if side == "right":
        mask = positions < lengths[:, None]
    else:
        mask = positions >= (width - lengths)[:, None]
    input_ids[mask] = torch.tensor([token for sequence in sequences for token in sequence], dtype=torch.long)
    return input_ids, mask.long()


def pad_token_id(target: TargetModel) -> int:
    tokenizer = target.tokenizer
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError(f"The tokenizer of {target.spec!r} has neither a pad nor an eos token; set tokenizer.pad_token.")


@torch.inference_mode()
def layer_outputs(target: TargetModel, layers: Iterable[int], input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> dict[int, torch.Tensor]:
    """Outputs of decoder blocks `layers` ([B, T, d] each, model dtype) without running later blocks.

    Equals `hidden_states[L + 1]` of a full forward for every L but the last block (whose HF hidden
    state has the final norm applied).
    """
    wanted = sorted({target.validate_layer(layer) for layer in layers})
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int):
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == wanted[-1]:
                raise _StopForward
        return hook

    handles = [target.residual_module(layer).register_forward_hook(capture(layer)) for layer in wanted]
    try:
        target.model(input_ids=input_ids.to(target.device), attention_mask=attention_mask.to(target.device),
                     use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured
