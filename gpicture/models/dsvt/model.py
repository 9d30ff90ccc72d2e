"""The DSVT encoder: stages of dynamic-set attention blocks with z pooling between them.

Per stage, two window configurations alternate over the blocks (block i uses
configuration i % 2): the stage's window shape with no shift, and the hybrid window
shape (window x hybrid factor) shifted by ``shift``. Each block is two set-attention
layers, the first over sets ordered along x, the second along y. Between stages,
attention-style pooling merges voxels along ``z_strides``. The output voxels can be
scattered into a bird's-eye-view map (channels = d_model x remaining z levels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gpicture.models.dsvt.layers import SetAttentionLayer, ZPooling
from gpicture.models.dsvt.partition import SetPartition, assign_windows, partition_sets


@dataclass(frozen=True)
class DSVTConfig:
    """DSVT hyper-parameters (one per stage where a list)."""

    sparse_shape: tuple[int, int, int]  # x, y, z voxels of the input grid
    d_model: int = 64
    nhead: int = 4
    dim_feedforward: int = 128
    set_size: int = 36
    window_shapes: tuple[tuple[int, int, int], ...] = ((12, 12, 20), (12, 12, 5))
    blocks: tuple[int, ...] = (1, 1)
    z_strides: tuple[tuple[int, int, int], ...] = ((1, 1, 4),)  # between consecutive stages (x, y, z)
    shift: tuple[int, int, int] = (6, 6, 0)
    hybrid_factor: tuple[int, int, int] = (2, 2, 1)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.window_shapes)
        if len(self.blocks) != n or len(self.z_strides) != n - 1:
            raise ValueError(f"DSVT config: {n} window shapes need {n} block counts and {n - 1} z strides")
        if self.d_model % self.nhead:
            raise ValueError(f"d_model {self.d_model} is not divisible by nhead {self.nhead}")

    @classmethod
    def from_params(cls, p: dict[str, Any], sparse_shape: tuple[int, int, int]) -> DSVTConfig:
        tup = lambda v: tuple(tuple(int(a) for a in x) for x in v)  # noqa: E731
        return cls(
            sparse_shape=tuple(int(v) for v in sparse_shape), d_model=int(p["d_model"]), nhead=int(p["nhead"]),
            dim_feedforward=int(p["dim_feedforward"]), set_size=int(p["set_size"]),
            window_shapes=tup(p["window_shapes"]), blocks=tuple(int(b) for b in p["blocks"]),
            z_strides=tup(p["z_strides"]), shift=tuple(int(v) for v in p["shift"]),
            hybrid_factor=tuple(int(v) for v in p["hybrid_factor"]), dropout=float(p.get("dropout", 0.0)),
        )

    @property
    def num_layers(self) -> int:
        return 2 * sum(self.blocks)


@dataclass
class DSVTOutput:
    """Encoder output. ``layer_index[l]`` maps every input voxel to its row in
    ``activations[l]`` (layers of later stages live on pooled voxels)."""

    features: Tensor  # (V_L, d) voxel features of the last stage
    coords: Tensor  # (V_L, 4) int32 b, z, y, x on the last stage's grid
    sparse_shape: tuple[int, int, int]  # x, y, z of the last stage's grid
    to_input: Tensor  # (V,) row of the last stage's voxel holding each input voxel
    activations: list[Tensor] = field(default_factory=list)  # per set-attention layer, (V_l, d)
    layer_index: list[Tensor] = field(default_factory=list)  # per layer, (V,) input voxel -> row of activations[l]

    def per_input_voxel(self, layer: int | None = None) -> Tensor:
        """Features broadcast back to the input voxels: (V, d) of a layer (default: the last)."""
        if layer is None:
            return self.features[self.to_input]
        return self.activations[layer][self.layer_index[layer]]


def _rel_pos(in_win: Tensor, window: tuple[int, int, int]) -> Tensor:
    w = torch.tensor(window, device=in_win.device, dtype=torch.float32)
    return (in_win.float() + 0.5) / w - 0.5


class DSVTEncoder(nn.Module):
    """Voxel features (V, d) at integer coords (V, 4) b, z, y, x -> DSVTOutput."""

    def __init__(self, cfg: DSVTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stages = nn.ModuleList(
            nn.ModuleList(
                SetAttentionLayer(cfg.d_model, cfg.nhead, cfg.dim_feedforward, cfg.dropout)
                for _ in range(2 * n_blocks)
            )
            for n_blocks in cfg.blocks
        )
        # A stride of (1, 1, 1) merges nothing: no pooling module (its parameters would get no gradient).
        self.pools = nn.ModuleList(
            ZPooling(cfg.d_model, cfg.nhead, s) if tuple(s) != (1, 1, 1) else nn.Identity() for s in cfg.z_strides
        )

    def partitions(self, coords: Tensor, stage: int, sparse_shape: tuple[int, int, int]) -> list[tuple[SetPartition, SetPartition, Tensor]]:
        """For both window configurations of a stage: the x- and y-ordered set partitions and
        each voxel's window-relative position."""
        cfg = self.cfg
        base = cfg.window_shapes[stage]
        hybrid = tuple(b * h for b, h in zip(base, cfg.hybrid_factor, strict=True))
        out = []
        for window, shift in ((base, (0, 0, 0)), (hybrid, cfg.shift)):
            a = assign_windows(coords, sparse_shape, window, shift)
            out.append((partition_sets(a, window, cfg.set_size, "x"), partition_sets(a, window, cfg.set_size, "y"),
                        _rel_pos(a.in_win, window)))
        return out

    def forward(self, features: Tensor, coords: Tensor, out_rows: Tensor | None = None) -> DSVTOutput:
        """``out_rows`` (V,) bool, optional: only these voxels' final features are wanted (the
        pre-training decoder reads the masked voxels only); the last layer then computes them
        alone (``SetAttentionLayer``'s ``rows``) and its output elsewhere is its input. The rows
        are the last stage's voxels (the input voxels when no stage pools, as in the decoder)."""
        cfg = self.cfg
        n_total = sum(len(layers) for layers in self.stages)
        done = 0
        x, c, shape = features, coords, cfg.sparse_shape
        to_input = torch.arange(len(x), device=x.device)
        acts: list[Tensor] = []
        maps: list[Tensor] = []
        block = 0  # DSVT's block counter runs across stages: block b uses window configuration b % 2
        for s, layers in enumerate(self.stages):
            parts = self.partitions(c, s, shape)
            for i in range(0, len(layers), 2):
                px, py, rel = parts[block % 2]
                block += 1
                x = layers[i](x, px, rel)
                acts.append(x)
                maps.append(to_input)
                done += 2
                x = layers[i + 1](x, py, rel, rows=out_rows if done == n_total else None)
                acts.append(x)
                maps.append(to_input)
            if s < len(self.pools) and isinstance(self.pools[s], ZPooling):
                x, c, group, shape = self.pools[s](x, c, shape)
                to_input = group[to_input]
        return DSVTOutput(features=x, coords=c, sparse_shape=shape, to_input=to_input, activations=acts, layer_index=maps)

    @staticmethod
    def bev(out: DSVTOutput, batch_size: int) -> Tensor:
        """Scatter the last stage's voxels into a BEV map (B, d * nz, ny, nx)."""
        nx, ny, nz = out.sparse_shape
        d = out.features.shape[1]
        canvas = out.features.new_zeros(batch_size, ny, nx, nz, d)
        c = out.coords.long()
        canvas[c[:, 0], c[:, 2], c[:, 3], c[:, 1]] = out.features
        return canvas.permute(0, 3, 4, 1, 2).reshape(batch_size, nz * d, ny, nx)
