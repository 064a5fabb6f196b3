"""Projectors: map encoder frames (B, T, C) to LLM embeddings (B, T', D).

    linear  one Linear layer
    mlp     N Linear layers with GELU between them (LLaVA's mlp2x_gelu is layers=2)
    stack   stack k consecutive frames, norm, a SwiGLU MLP, and an output RMSNorm (ultravox):
            T' = ceil(T / k)
    stack_mlp
            stack k consecutive frames, then Linear-GELU-Linear without biases: Voxtral's projector, so
            a speech model with it exports to VoxtralForConditionalGeneration (`mmtune.model.native`)

The stack projector ends in an RMSNorm, as ultravox's does: without it, its output norm grows
during training (measured: 238 against 0.6 for text embeddings after 900 steps of the offline
example), and the LLM's input norms then shrink the gradient that reaches the encoder.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmtune.config import ProjectorConfig


class LinearProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, T, C) -> (B, T, D)


class MLPProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, layers: int = 2, hidden_dim: int | None = None):
        super().__init__()
        self.in_dim = in_dim
        hidden_dim = hidden_dim or out_dim
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                blocks.append(nn.GELU())
        self.mlp = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)  # (B, T, C) -> (B, T, D)


class StackProjector(nn.Module):
    """Frame stacking then SwiGLU, as ultravox: fewer, wider audio tokens."""

    def __init__(self, in_dim: int, out_dim: int, stack: int, hidden_dim: int | None = None):
        super().__init__()
        self.in_dim = in_dim
        self.stack = stack
        hidden_dim = hidden_dim or out_dim
        self.norm = nn.LayerNorm(in_dim * stack)
        self.gate_up = nn.Linear(in_dim * stack, 2 * hidden_dim)
        self.down = nn.Linear(hidden_dim, out_dim)
        self.out_norm = nn.RMSNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(self.norm(stack_frames(x, self.stack))).chunk(2, dim=-1)  # (B, T', H) each
        return self.out_norm(self.down(F.silu(gate) * up))  # (B, T', H) -> (B, T', D)


class StackMLPProjector(nn.Module):
    """Frame stacking then Linear-GELU-Linear, no biases, as Voxtral's multi_modal_projector (it reshapes
    the encoder's (T, C) frames to (T / k, C * k), k = its encoder's intermediate_size / d_model)."""

    def __init__(self, in_dim: int, out_dim: int, stack: int, hidden_dim: int | None = None):
        super().__init__()
        self.in_dim = in_dim
        self.stack = stack
        self.linear_1 = nn.Linear(in_dim * stack, hidden_dim or out_dim, bias=False)
        self.linear_2 = nn.Linear(hidden_dim or out_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(stack_frames(x, self.stack))))  # (B, T', C*k) -> (B, T', D)


def stack_frames(x: torch.Tensor, stack: int) -> torch.Tensor:
    """(B, T, C) -> (B, ceil(T / k), C * k): k consecutive frames side by side, zero frames after the end."""
    b, t, c = x.shape
    t_out = math.ceil(t / stack)
    x = F.pad(x, (0, 0, 0, t_out * stack - t))  # (B, T'*k, C)
    return x.reshape(b, t_out, c * stack)


def build_projector(cfg: ProjectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    if cfg.type == "linear":
        return LinearProjector(in_dim, out_dim)
    if cfg.type == "mlp":
        return MLPProjector(in_dim, out_dim, cfg.layers, cfg.hidden_size)
    if cfg.type == "stack_mlp":
        return StackMLPProjector(in_dim, out_dim, cfg.stack, cfg.hidden_size)
    return StackProjector(in_dim, out_dim, cfg.stack, cfg.hidden_size)
