"""DSVT layers: learned position embeddings, set attention, and attention-style z pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpicture.models.dsvt.partition import SetPartition
from gpicture.ops import in_group_index


class PositionEmbedding(nn.Module):
    """Learned embedding of (normalised) relative coordinates: Linear-BN-ReLU-Linear."""

    def __init__(self, in_dim: int, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, d_model), nn.BatchNorm1d(d_model), nn.ReLU(inplace=True),
                                 nn.Linear(d_model, d_model))

    def forward(self, rel: Tensor) -> Tensor:
        return self.net(rel)


class SetAttentionLayer(nn.Module):
    """One DSVT encoder layer: multi-head attention inside every set (keys of repeated
    voxels masked), a residual and LayerNorm, then a feed-forward block (post-norm) — the
    reference's ``SetAttention`` — wrapped, as the reference's ``DSVT_EncoderLayer``, in an
    outer residual around the whole and a third LayerNorm."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.pos = PositionEmbedding(3, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm_out = nn.LayerNorm(d_model)  # DSVT_EncoderLayer's norm after its outer residual
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(dim_feedforward, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, part: SetPartition, rel_pos: Tensor, rows: Tensor | None = None) -> Tensor:
        """``x`` (V, d) voxel features; ``rel_pos`` (V, 3) window-relative coordinates in [-0.5, 0.5].

        The attention is ``nn.MultiheadAttention``'s (its parameters, so checkpoints load
        unchanged) computed per voxel where it is per token: the query/key/value projections
        run on the V voxels before they are gathered into the T x S set slots (a slot repeats
        a voxel of its window, T x S is 1.2-2.4 x V on the small profile's stages), and the
        output projection runs on each voxel's first slot only — the rows the write-back keeps.
        ``attention_reference`` is the module call it replaces (tests compare the two).

        ``rows`` (V,) bool, optional: only those voxels' outputs are wanted (a decoder's last
        layer, whose loss reads the masked voxels only). Attention then runs over the sets that
        write one of them back, the feed-forward block over those rows; the result equals the
        full layer's at ``rows`` and is the input ``x`` elsewhere."""
        pos = self.pos(rel_pos)  # every voxel: keys need it, and BatchNorm's statistics stay the full layer's
        if rows is None:
            return self._finish(x, self.set_attention(x, x + pos, part))
        sel = (part.first & rows[part.voxel]).any(1)
        sub = SetPartition(voxel=part.voxel[sel], pad_mask=part.pad_mask[sel],
                           first=part.first[sel] & rows[part.voxel[sel]], set_window=part.set_window[sel])
        idx = rows.nonzero()[:, 0]
        out = self.set_attention(x, x + pos, sub)
        # under CUDA autocast LayerNorm returns fp32 while x may be bf16: index_copy does not promote
        return x.index_copy(0, idx, self._finish(x[idx], out[idx]).to(x.dtype))

    def _finish(self, x: Tensor, attended: Tensor) -> Tensor:
        """Residual + LayerNorm, feed-forward + LayerNorm, outer residual + LayerNorm (per row)."""
        identity = x
        x = self.norm1(x + self.drop(attended))
        x = self.norm2(x + self.drop(self.ffn(x)))
        return self.norm_out(identity + x)

    def set_attention(self, x: Tensor, q_in: Tensor, part: SetPartition) -> Tensor:
        """Multi-head attention inside every set, written back to the voxels (V, d): query and
        key from ``q_in`` (features + position), value from ``x``; repeated slots are masked
        as keys, each voxel takes the output of its first slot."""
        attn = self.attn
        d, h = x.shape[1], attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        qk = F.linear(q_in, w[:2 * d], b[:2 * d])  # (V, 2d) per voxel, not per slot
        v = F.linear(x, w[2 * d:], b[2 * d:])
        t, s = part.voxel.shape
        heads = lambda a: a[part.voxel].view(t, s, h, d // h).transpose(1, 2)  # noqa: E731  (T, h, S, d/h)
        q, k = heads(qk[:, :d]), heads(qk[:, d:])
        keep = ~part.pad_mask[:, None, None, :]  # (T, 1, 1, S): attend to the first copy of each voxel only
        o = F.scaled_dot_product_attention(q, k, heads(v), attn_mask=keep,
                                           dropout_p=attn.dropout if self.training else 0.0)
        o = o.transpose(1, 2).reshape(t * s, d)
        first = part.first.reshape(-1)
        rows = attn.out_proj(o[first])  # one row per voxel (bf16 under autocast, x may be fp32 from a LayerNorm)
        return torch.zeros_like(x).index_copy(0, part.voxel.reshape(-1)[first], rows.to(x.dtype))

    def attention_reference(self, x: Tensor, q_in: Tensor, part: SetPartition) -> Tensor:
        """The same attention through ``nn.MultiheadAttention`` on the gathered slots (the
        previous implementation; kept for the equivalence test and the benchmark's baseline)."""
        xs, qs = x[part.voxel], q_in[part.voxel]  # (T, S, d)
        out, _ = self.attn(qs, qs, xs, key_padding_mask=part.pad_mask, need_weights=False)
        first = part.first
        return torch.zeros_like(x).index_copy(0, part.voxel[first], out[first].to(x.dtype))


class ZPooling(nn.Module):
    """Attention-style pooling between stages: voxels sharing a cell of ``stride``
    (x, y, z) become one voxel whose query is the members' max and whose value is the
    attention over the members (keys carry their offset inside the cell)."""

    def __init__(self, d_model: int, nhead: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.stride = stride
        self.pos = PositionEmbedding(3, d_model)
        self.attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, coords: Tensor, sparse_shape: tuple[int, int, int]) -> tuple[Tensor, Tensor, Tensor, tuple[int, int, int]]:
        """Returns (pooled features (G, d), pooled coords (G, 4) b, z, y, x, the pooled voxel of
        every input voxel (V,), the new sparse shape (x, y, z))."""
        sx, sy, sz = self.stride
        stride_zyx = torch.tensor([1, sz, sy, sx], device=coords.device)
        new = torch.div(coords.long(), stride_zyx, rounding_mode="floor")
        nx, ny, nz = (-(-sparse_shape[0] // sx), -(-sparse_shape[1] // sy), -(-sparse_shape[2] // sz))
        key = ((new[:, 0] * nz + new[:, 1]) * ny + new[:, 2]) * nx + new[:, 3]
        uniq, group = torch.unique(key, return_inverse=True)
        g = len(uniq)
        rank = in_group_index(group, g)
        k = sx * sy * sz
        slots = torch.full((g, k), -1, dtype=torch.long, device=x.device)
        slots[group, rank] = torch.arange(len(x), device=x.device)
        pad = slots < 0
        safe = slots.clamp_min(0)
        offset = (coords.long() - new * stride_zyx)[:, 1:].flip(1).float()  # x, y, z inside the cell
        denom = torch.tensor([sx, sy, sz], device=x.device, dtype=torch.float32)
        pos = self.pos((offset + 0.5) / denom - 0.5)
        members = x[safe]
        query = members.masked_fill(pad[..., None], float("-inf")).amax(1, keepdim=True)
        out, _ = self.attn(query, members + pos[safe], members, key_padding_mask=pad, need_weights=False)
        pooled = self.norm(query[:, 0] + out[:, 0])
        b, rem = torch.div(uniq, nz * ny * nx, rounding_mode="floor"), uniq % (nz * ny * nx)
        z, rem = torch.div(rem, ny * nx, rounding_mode="floor"), rem % (ny * nx)
        y, xx = torch.div(rem, nx, rounding_mode="floor"), rem % nx
        return pooled, torch.stack([b, z, y, xx], 1).int(), group, (nx, ny, nz)
