"""HyperSteer's hypernetwork H(concept description, prompt) → Δ ∈ R^d (Sun et al. 2025; spec §3.14), plain torch.

A small decoder stack over the concept description's tokens. Each of its N blocks is
  self-attention over the description (causal, RoPE)
  → cross-attention: queries from the hypernet stream (RoPE on the queries only, as the reference), keys and
    values from the target model's residual stream over the *prompt* tokens (`hidden_states[L]`, the input of
    block L, one block before the steering site — as the reference reads it)
  → MLP,
with the target's own residual layout: pre-norm (Llama) or Gemma's sandwich norms (post-norms too, RMSNorm
with a 1 + w scale, embeddings × √d, attention soft-capping). The last token's final state goes through a
Linear(d, d) regression head (no final norm, as the reference).

Built from the target's config, never from transformers' private modules, and initialised from the target:
embeddings (frozen and not stored: `HyperSteerResult` re-attaches them from the target) and blocks 0..N−1
(self-attention, MLP, norms). The reference leaves the cross-attention at random init (its checkpoint has no
such weights); ours starts as a copy of the same block's self-attention, and the keys / values are first
normalised with the target's own input norm of block L (what the target applies to these very states before
its attention). The copied projections already map residual vectors to meaningful queries, keys and values,
so the cross-attention reads the prompt from step 0 instead of adding noise (docs/protocol.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from axdata.errors import InputError

_ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu,
                "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


@dataclass(frozen=True)
class HypernetShape:
    """What the network is built from: the target config's facts (stored in the result's config.json)."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_hidden_layers: int
    rms_norm_eps: float
    rope_theta: float
    activation: str
    sandwich_norms: bool  # Gemma-2/3: post-attention and post-MLP norms, RMSNorm scale 1 + w
    embed_scale: float
    attention_scale: float
    softcap: float | None
    qk_norm: bool  # Gemma-3 normalises queries and keys per head
    attention_bias: bool
    vocab_size: int

    @classmethod
    def from_config(cls, config: Any, num_hidden_layers: int) -> HypernetShape:
        """The shape of a hypernetwork for a target model with transformers config `config`."""
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        gemma = "gemma" in str(config.model_type)
        rope = getattr(config, "rope_parameters", None) or {}
        theta = float(getattr(config, "rope_theta", None) or rope.get("rope_theta", 10000.0))
        scalar = getattr(config, "query_pre_attn_scalar", None)
        activation = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")
        if activation not in _ACTIVATIONS:
            raise InputError(f"HyperSteer: the target's MLP activation {activation!r} is not supported; "
                             f"supported: {', '.join(_ACTIVATIONS)}.")
        if not 1 <= num_hidden_layers <= int(config.num_hidden_layers):
            raise InputError(f"HyperSteer: num_hidden_layers must be 1..{config.num_hidden_layers} (the target's "
                             f"blocks the hypernetwork is initialised from); got {num_hidden_layers}.")
        return cls(hidden, heads, int(getattr(config, "num_key_value_heads", None) or heads), head_dim,
                   int(config.intermediate_size), num_hidden_layers, float(config.rms_norm_eps), theta, activation,
                   gemma, math.sqrt(hidden) if gemma else 1.0, (scalar or head_dim) ** -0.5,
                   getattr(config, "attn_logit_softcapping", None), "gemma3" in str(config.model_type),
                   bool(getattr(config, "attention_bias", False)), int(config.vocab_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, offset: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if offset else torch.ones(size))
        self.eps, self.offset = eps, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (self.offset + self.weight.float())).to(x.dtype)


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE (half-split layout, as Llama / Gemma) of x [B, H, T, hd] at `positions` [B, T]."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None, :, None] * inv_freq  # [B, 1, T, half]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads; self-attention (RoPE on q and k) or cross-attention (q only)."""

    def __init__(self, shape: HypernetShape) -> None:
        super().__init__()
        d, hd, bias = shape.hidden_size, shape.head_dim, shape.attention_bias
        self.shape = shape
        self.q_proj = nn.Linear(d, shape.num_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, shape.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, shape.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(shape.num_heads * hd, d, bias=bias)
        if shape.qk_norm:
            self.q_norm = RMSNorm(hd, shape.rms_norm_eps, 1.0)
            self.k_norm = RMSNorm(hd, shape.rms_norm_eps, 1.0)

    def _heads(self, x: torch.Tensor, projection: nn.Linear, heads: int) -> torch.Tensor:
        return projection(x).view(x.shape[0], x.shape[1], heads, self.shape.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, keys_from: torch.Tensor, mask: torch.Tensor,
                rotate_keys: bool) -> torch.Tensor:
        """x [B, T, d] attends to `keys_from` [B, S, d] where `mask` [B, T, S] is True."""
        s = self.shape
        q = self._heads(x, self.q_proj, s.num_heads)
        k = self._heads(keys_from, self.k_proj, s.num_kv_heads)
        v = self._heads(keys_from, self.v_proj, s.num_kv_heads)
        if s.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = rotate(q, positions, s.rope_theta)
        if rotate_keys:
            k = rotate(k, positions, s.rope_theta)
        k = k.repeat_interleave(s.num_heads // s.num_kv_heads, dim=1)
        v = v.repeat_interleave(s.num_heads // s.num_kv_heads, dim=1)
        mask = mask[:, None]
        if s.softcap:  # SDPA has no logit soft-capping: Gemma-2's attention written out
            scores = (q @ k.transpose(-1, -2)).float() * s.attention_scale
            scores = torch.tanh(scores / s.softcap) * s.softcap
            weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1).to(v.dtype)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=s.attention_scale)
        return self.o_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class MLP(nn.Module):
    def __init__(self, shape: HypernetShape) -> None:
        super().__init__()
        d, i = shape.hidden_size, shape.intermediate_size
        self.gate_proj, self.up_proj = nn.Linear(d, i, bias=False), nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)
        self.act = _ACTIVATIONS[shape.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class HypernetBlock(nn.Module):
    """Self-attention over the description → cross-attention to the prompt's residuals → MLP."""

    def __init__(self, shape: HypernetShape) -> None:
        super().__init__()
        def norm() -> nn.Module:
            return RMSNorm(shape.hidden_size, shape.rms_norm_eps, 1.0 if shape.sandwich_norms else 0.0)

        def post() -> nn.Module:
            return norm() if shape.sandwich_norms else nn.Identity()

        self.input_norm, self.self_attn, self.post_attn_norm = norm(), Attention(shape), post()
        self.cross_norm, self.cross_attn, self.post_cross_norm = norm(), Attention(shape), post()
        self.mlp_norm, self.mlp, self.post_mlp_norm = norm(), MLP(shape), post()

    def forward(self, h: torch.Tensor, positions: torch.Tensor, self_mask: torch.Tensor, memory: torch.Tensor,
                cross_mask: torch.Tensor) -> torch.Tensor:
        normed = self.input_norm(h)
        h = h + self.post_attn_norm(self.self_attn(normed, positions, normed, self_mask, rotate_keys=True))
        h = h + self.post_cross_norm(self.cross_attn(self.cross_norm(h), positions, memory, cross_mask,
                                                     rotate_keys=False))
        return h + self.post_mlp_norm(self.mlp(self.mlp_norm(h)))


class HyperNetwork(nn.Module):
    """H(description tokens, prompt residuals) → Δ [B, d]. `embed` is the target's (frozen, not in `trained_state`)."""

    def __init__(self, shape: HypernetShape, embed: nn.Embedding) -> None:
        super().__init__()
        self.shape = shape
        self.embed = embed
        self.embed.weight.requires_grad_(False)
        self.memory_norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps, 1.0 if shape.sandwich_norms else 0.0)
        self.blocks = nn.ModuleList(HypernetBlock(shape) for _ in range(shape.num_hidden_layers))
        self.regression_head = nn.Linear(shape.hidden_size, shape.hidden_size)

    def forward(self, concept_ids: torch.Tensor, concept_mask: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        """`concept_ids` / `concept_mask` [B, T] left-padded; `memory` [B, S, d] residuals, `memory_mask` [B, S]."""
        mask = concept_mask.bool()
        positions = (concept_mask.long().cumsum(-1) - 1).clamp_min(0)
        t = concept_ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()
        # Left padding: a padded query attends to itself only, so no softmax row is empty (its output is unused).
        self_mask = (causal & mask[:, None, :]) | torch.eye(t, dtype=torch.bool, device=mask.device)
        cross_mask = memory_mask.bool()[:, None, :].expand(-1, t, -1)
        h = self.embed(concept_ids).float() * self.shape.embed_scale
        memory = self.memory_norm(memory.float())
        for block in self.blocks:
            h = block(h, positions, self_mask, memory, cross_mask)
        return self.regression_head(h[:, -1])

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Every parameter but the (frozen, target-owned) embeddings: what a result stores."""
        return {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()
                if not k.startswith("embed.")}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("embed.")]
        if missing or unexpected:
            raise InputError(f"hypernetwork weights do not fit its shape: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}; the files are damaged or come from another version.")


def _copy(destination: nn.Module, source: nn.Module, names: dict[str, str]) -> None:
    with torch.no_grad():
        for mine, theirs in names.items():
            destination.get_submodule(mine).load_state_dict(source.get_submodule(theirs).state_dict())


def initialise_from_target(network: HyperNetwork, target_layers: nn.ModuleList, layer: int) -> None:
    """Blocks 0..N−1 copied from the target's (self-attention, MLP, norms); the cross-attention from the same
    block's self-attention; the memory norm from the target's input norm of block `layer`; the head small."""
    sandwich = network.shape.sandwich_norms
    for block, source in zip(network.blocks, target_layers):
        names = {"input_norm": "input_layernorm", "self_attn": "self_attn", "cross_attn": "self_attn",
                 "cross_norm": "input_layernorm", "mlp": "mlp"}
        if sandwich:
            names.update(post_attn_norm="post_attention_layernorm", post_cross_norm="post_attention_layernorm",
                         mlp_norm="pre_feedforward_layernorm", post_mlp_norm="post_feedforward_layernorm")
        else:  # Llama's "post_attention_layernorm" is the norm before the MLP
            names["mlp_norm"] = "post_attention_layernorm"
        _copy(block, source, names)
    _copy(network, target_layers[layer], {"memory_norm": "input_layernorm"})
    with torch.no_grad():
        network.regression_head.weight.normal_(0.0, 0.02)
        network.regression_head.bias.zero_()


def build_hypernetwork(target_model: nn.Module, target_layers: nn.ModuleList, layer: int, num_hidden_layers: int,
                       *, initialise: bool = True) -> HyperNetwork:
    """A fresh hypernetwork for `target_model` steering block `layer` (fp32, on the target's device)."""
    shape = HypernetShape.from_config(target_model.config, num_hidden_layers)
    source = target_model.get_input_embeddings()
    embed = nn.Embedding.from_pretrained(source.weight.detach(), freeze=True)  # shared with the target
    network = HyperNetwork(shape, embed)
    if initialise:
        initialise_from_target(network, target_layers, layer)
    return network.to(source.weight.device)
