"""Row operations on a batch's KV cache, so requests can join and leave a running batch.

A batch is a rectangle: every row's tokens are right-aligned and shorter rows are left-padded, with an
attention mask (B, T) marking real tokens. Each cache layer holds keys and values of shape
(B, kv_heads, T, head_dim). Joining pads the narrower side on the left; leaving selects rows and then
drops leading columns that are padding in every remaining row. Positions (RoPE) are per row and were
applied when the keys were computed, so moving keys sideways does not change what they mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_cache", "left_pad", "merge_rows", "select_rows"]


def check_cache(cache) -> None:
    """Refuse caches whose layers are not plain growing tensors (sliding-window or quantized layers)."""
    for layer in cache.layers:
        if not (hasattr(layer, "keys") and hasattr(layer, "values")) or getattr(layer, "is_sliding", False):
            raise TypeError(f"unsupported KV cache layer {type(layer).__name__} for dynamic batching")


def left_pad(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Prepend `n` zeros along `dim` (n may be 0)."""
    if n == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [n, 0]
    return F.pad(x, pad)


def merge_rows(cache_a, mask_a: torch.Tensor, cache_b, mask_b: torch.Tensor) -> torch.Tensor:
    """Append the rows of (cache_b, mask_b) to (cache_a, mask_a) in place of cache_a; returns the new mask."""
    ta, tb = mask_a.shape[1], mask_b.shape[1]
    t = max(ta, tb)
    for la, lb in zip(cache_a.layers, cache_b.layers, strict=True):
        la.keys = torch.cat([left_pad(la.keys, t - ta, 2), left_pad(lb.keys, t - tb, 2)], dim=0)
        la.values = torch.cat([left_pad(la.values, t - ta, 2), left_pad(lb.values, t - tb, 2)], dim=0)
    return torch.cat([left_pad(mask_a, t - ta, 1), left_pad(mask_b, t - tb, 1)], dim=0)


def select_rows(cache, mask: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Keep only rows `keep` (in that order) and trim all-padding leading columns; returns the new mask."""
    idx = torch.tensor(keep, dtype=torch.long, device=mask.device)
    mask = mask.index_select(0, idx)
    first = int(mask.any(dim=0).to(torch.int8).argmax())  # first column holding a real token of some row
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, idx)[:, :, first:]
        layer.values = layer.values.index_select(0, idx)[:, :, first:]
    return mask[:, first:]
