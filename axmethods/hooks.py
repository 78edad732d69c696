"""The one hook mechanism: every intervention, activation read and trainable parameterisation reads or edits a
module's output through `hook_output`, and reading stops the forward through `layer_outputs`.

Decoder blocks return a tensor or a tuple whose first element is the hidden state (it depends on the
architecture and the transformers version); `hook_output` hands its function the tensor, re-wraps what the
function returns, and removes the hook when the block exits, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from axmethods.models import TargetModel


@dataclass(frozen=True)
class Call:
    """One call of the hooked module: the module and what it received (e.g. `kwargs["position_ids"]`)."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


# hidden [B, T, d] and the call → the replacement output tensor, or None to leave the output as it is.
OutputFn = Callable[[torch.Tensor, Call], "torch.Tensor | None"]


@contextmanager
def hook_output(module: nn.Module, fn: OutputFn) -> Iterator[None]:
    """Run `fn` on `module`'s output tensor after every forward of `module` inside the block."""

    def hook(hooked: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        is_tuple = isinstance(output, tuple)
        replaced = fn(output[0] if is_tuple else output, Call(hooked, args, kwargs))
        if replaced is None:
            return None
        return (replaced, *output[1:]) if is_tuple else replaced

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class _StopForward(Exception):
    """Raised once every wanted output is captured; never escapes `layer_outputs`."""


@torch.inference_mode()
def layer_outputs(target: TargetModel, layers: Iterable[int], input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> dict[int, torch.Tensor]:
    """Outputs of decoder blocks `layers` ([B, T, d] each) without running the later blocks or the LM head.

    Detection needs only the output of block L; the later blocks and the lm_head (a [tokens, vocab] matmul, the
    largest one in small models) would be wasted work. Equals `hidden_states[L + 1]` of a full forward for every
    L but the last block (whose HF hidden state has the final norm applied).
    """
    wanted = sorted({target.validate_layer(layer) for layer in layers})
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int) -> OutputFn:
        def read(hidden: torch.Tensor, _call: Call) -> None:
            captured[layer] = hidden
            if layer == wanted[-1]:
                raise _StopForward
        return read

    with ExitStack() as hooks:
        for layer in wanted:
            hooks.enter_context(hook_output(target.residual_module(layer), capture(layer)))
        try:
            target.model(input_ids=input_ids.to(target.device), attention_mask=attention_mask.to(target.device),
                         use_cache=False)
        except _StopForward:
            pass
    return captured
