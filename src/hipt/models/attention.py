"""Last-block self-attention maps of ViT-256 / ViT-4K without leaving the fused SDPA fast path."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["attention_maps", "explicit_attention"]


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the input is known."""


def explicit_attention(attn: Any, x: Tensor) -> Tensor:
    """Post-softmax attention of a timm ``Attention`` module for its (already normed) input.

    Args:
        attn: module with ``qkv``, ``num_heads``, ``head_dim``, ``scale``, ``q_norm``, ``k_norm``.
        x: tokens ``[B, N, C]`` as seen by ``attn``.

    Returns:
        ``softmax(q k^T * scale)`` ``[B, heads, N, N]``.
    """
    b, n, _ = x.shape
    heads, head_dim = int(attn.num_heads), int(attn.head_dim)
    # qkv: [3, B, heads, N, head_dim]
    qkv = attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def attention_maps(model: nn.Module, x: Tensor, **kwargs: Any) -> Tensor:
    """Attention of the last block (ViTs) or over regions (slide heads).

    For a ViT the forward pass runs normally (fused attention untouched) up to the last block;
    a hook on its ``norm1`` captures the normed tokens, and the attention weights are recomputed
    explicitly from that block's ``qkv`` projection. The remaining layers are skipped.

    Args:
        model: ``Vit256``, ``Vit4K`` (optionally ``torch.compile``-wrapped) or a slide head.
        x: the model input (``[B, 3, 256, 256]``, ``[B, 384, H, W]`` or a bag).
        **kwargs: forwarded to slide heads (``mask=...``).

    Returns:
        ``[B, heads, N + 1, N + 1]`` for ViTs (CLS first; ``[:, :, 0, 1:]`` is the CLS row),
        ``[M]`` for slide heads.
    """
    base: nn.Module = getattr(model, "_orig_mod", model)
    blocks = getattr(base, "blocks", None)
    if blocks is None or len(blocks) == 0:
        out = base(x, **kwargs)
        attention = getattr(out, "attention", None)
        if not isinstance(attention, Tensor):
            raise TypeError(f"{type(base).__name__} exposes neither blocks nor an attention output")
        return attention
    last: Any = blocks[-1]
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        captured.append(output)
        raise _Captured

    handle = last.norm1.register_forward_hook(hook)
    try:
        base(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the last block was not reached during the forward pass")
    return explicit_attention(last.attn, captured[0])
