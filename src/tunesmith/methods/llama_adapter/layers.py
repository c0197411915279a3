"""AdaptedAttention: a Llama attention module plus gated attention over learned adaption prompts.

    out = attn(x) + o_proj(gate * softmax(q k_p^T / sqrt(d)) v_p)

q is the layer's own (rotated) query of x; k_p, v_p are k_proj/v_proj of the prompt (no RoPE),
repeated over the query groups under grouped-query attention. The softmax runs over the prompt
alone, every position sees the whole prompt, and gate starts at 0, so the output equals the base
model's at init. Same arithmetic as PEFT's AdaptedAttention (one scalar gate per layer).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..base import AdapterLayer


class AdaptedAttention(AdapterLayer):
    """Wraps a LlamaAttention (q/k/v/o_proj, head_dim, num_key_value_groups)."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.adaption_prompt = nn.ParameterDict()  # name -> (1, len, hidden)
        self.adaption_gate = nn.ParameterDict()  # name -> (1,)

    def add_adapter(self, name: str, adapter_len: int, hidden_size: int) -> None:
        device = next(self.base_layer.parameters()).device
        self.adaption_prompt[name] = nn.Parameter(
            torch.randn(1, adapter_len, hidden_size, device=device)
        )
        self.adaption_gate[name] = nn.Parameter(torch.zeros(1, device=device))  # zero-init gate
        self.active_adapters = [name]

    def _adapter_names(self):
        return iter(self.adaption_prompt.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {
            "adaption_prompt": self.adaption_prompt[name],
            "adaption_gate": self.adaption_gate[name],
        }

    def delete_adapter(self, name: str) -> None:
        del self.adaption_prompt[name]
        del self.adaption_gate[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def check_mergeable(self) -> None:
        if self.active_adapters:
            raise ConfigError(
                "llama_adapter adds attention over its prompts and cannot be merged into the weights"
            )

    def merge(self) -> None:
        self.check_mergeable()

    def unmerge(self) -> None:
        pass  # nothing is ever merged

    def forward(self, *args, **kwargs):
        out, weights = self.base_layer(*args, **kwargs)
        if self.disabled or not self.active_adapters:
            return out, weights
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        for name in self.active_adapters:
            out = out + self._prompt_attention(name, hidden, kwargs["position_embeddings"]).to(
                out.dtype
            )
        return out, weights

    def _prompt_attention(
        self, name: str, hidden: torch.Tensor, position_embeddings
    ) -> torch.Tensor:
        attn = self.base_layer
        batch, seq, _ = hidden.shape
        d = attn.head_dim
        q = attn.q_proj(hidden).view(batch, seq, -1, d).transpose(1, 2)  # (B, H, T, d)
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        q = q * cos + _rotate_half(q) * sin
        prompt = self.adaption_prompt[name].to(hidden.dtype)  # (1, L, hidden)
        k = (
            attn.k_proj(prompt).view(1, prompt.shape[1], -1, d).transpose(1, 2)
        )  # (1, kv heads, L, d)
        v = attn.v_proj(prompt).view(1, prompt.shape[1], -1, d).transpose(1, 2)
        k = k.repeat_interleave(attn.num_key_value_groups, dim=1)  # (1, H, L, d)
        v = v.repeat_interleave(attn.num_key_value_groups, dim=1)
        scores = q @ k.transpose(2, 3) / math.sqrt(d)  # (B, H, T, L)
        probs = self.adaption_gate[name] * F.softmax(scores, dim=-1, dtype=torch.float32).to(
            q.dtype
        )
        mixed = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(batch, seq, -1)  # (B, T, H * d)
        return attn.o_proj(mixed)

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
