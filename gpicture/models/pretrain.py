"""GPICTURE's pre-training model: masked encoding, a light decoder, and hierarchical
reconstruction of points and teacher features.

The student encodes only the visible voxels. For every supervised layer l, the
layer's features (broadcast back to the input voxels) fill the visible voxels and a
learned mask token (plus an embedding of the voxel's position) fills the masked ones;
one light DSVT decoder runs over all L copies at once (each copy is a separate batch
entry; the paper's decoder has two stages, the second on the shifted windows), and per-layer
heads predict, for every masked voxel, 16 points relative to the
voxel centre in metres (Chamfer distance to its up to 64 true points) and the 64-d teacher
feature (Smooth-L1, where the voxel has a teacher target). The layer loss is
alpha_l * L_points + (1 - alpha_l) * beta_t * L_teacher (CKA-guided hierarchy, gated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from gpicture.data.batch import VoxelBatch, move_to
from gpicture.models.dsvt import DSVTConfig, DSVTEncoder
from gpicture.models.student import Student


@dataclass
class PretrainBatch:
    """B frames for pre-training: the batch core plus, per voxel (rows follow
    ``voxels.voxel_coords``), the teacher target and the true points."""

    voxels: VoxelBatch
    teacher: Tensor  # (V, 64) float32 teacher features
    teacher_valid: Tensor  # (V,) bool voxel has a teacher target
    true_points: Tensor  # (V, P, 3) float32 points relative to the voxel centre, metres, first P by store order
    true_count: Tensor  # (V,) int64 valid rows of true_points (>= 1)

    @property
    def batch_size(self) -> int:
        return self.voxels.batch_size

    def to(self, device: torch.device | str) -> PretrainBatch:
        return move_to(self, device)


@dataclass(frozen=True)
class ReconstructionConfig:
    alpha: tuple[float, ...]  # one per supervised layer (the paper: 0.97 ... 0.31 for 8 layers)
    pred_points: int = 16
    teacher_dim: int = 64
    decoder_blocks: tuple[int, ...] = (1,)  # blocks per decoder stage (the paper: 2 stages)


def chamfer(pred: Tensor, true: Tensor, count: Tensor) -> Tensor:
    """Symmetric squared Chamfer distance per voxel, averaged: ``pred`` (M, P, 3),
    ``true`` (M, Q, 3) with ``count`` (M,) valid rows each."""
    # |p - t|^2 = |p|^2 + |t|^2 - 2 p.t with one batched matmul: no (M, P, Q, 3) intermediate
    d = (pred.square().sum(-1)[:, :, None] + true.square().sum(-1)[:, None, :]
         - 2 * torch.bmm(pred, true.transpose(1, 2))).clamp_min(0)  # (M, P, Q)
    valid = torch.arange(true.shape[1], device=true.device)[None, :] < count[:, None]  # (M, Q)
    p2t = d.masked_fill(~valid[:, None, :], float("inf")).min(2).values.mean(1)
    t2p = (d.min(1).values * valid).sum(1) / count.clamp_min(1)
    return (p2t + t2p).mean()


@dataclass
class PretrainLosses:
    total: Tensor
    points: Tensor  # (L,) per-layer Chamfer
    teacher: Tensor  # (L,) per-layer Smooth-L1
    masked_fraction: float


class GPicturePretrainer(nn.Module):
    """Student + decoder + heads; ``forward(batch, mask, beta)`` returns the losses."""

    def __init__(self, student: Student, cfg: ReconstructionConfig) -> None:
        super().__init__()
        self.student = student
        self.cfg = cfg
        dcfg = student.cfg.dsvt
        d = dcfg.d_model
        n_layers = dcfg.num_layers
        if len(cfg.alpha) != n_layers:
            raise ValueError(f"alpha has {len(cfg.alpha)} values for {n_layers} supervised layers")
        self.register_buffer("alpha", torch.tensor(cfg.alpha, dtype=torch.float32), persistent=False)
        self.decoder = DSVTEncoder(DSVTConfig(
            sparse_shape=dcfg.sparse_shape, d_model=d, nhead=dcfg.nhead, dim_feedforward=dcfg.dim_feedforward,
            set_size=dcfg.set_size, window_shapes=(dcfg.window_shapes[0],) * len(cfg.decoder_blocks),
            blocks=tuple(cfg.decoder_blocks), z_strides=((1, 1, 1),) * (len(cfg.decoder_blocks) - 1),
            shift=dcfg.shift, hybrid_factor=dcfg.hybrid_factor))
        self.mask_token = nn.Parameter(torch.zeros(d))
        nn.init.normal_(self.mask_token, std=0.02)
        self.mask_pos = nn.Linear(3, d)
        self.point_heads = nn.ModuleList(nn.Linear(d, cfg.pred_points * 3) for _ in range(n_layers))
        self.teacher_heads = nn.ModuleList(nn.Linear(d, cfg.teacher_dim) for _ in range(n_layers))

    def forward(self, batch: PretrainBatch, mask: Tensor, beta: float) -> PretrainLosses:
        coords = batch.voxels.voxel_coords
        v = len(coords)
        visible = (~mask).nonzero()[:, 0]
        masked = mask.nonzero()[:, 0]
        out = self.student.encode(batch.voxels, keep=visible)
        n_layers = len(out.activations)
        shape = torch.tensor(self.student.cfg.dsvt.sparse_shape, device=coords.device, dtype=torch.float32)
        token = self.mask_token + self.mask_pos(coords[masked][:, [3, 2, 1]].float() / shape - 0.5)
        inputs = []
        for layer in range(n_layers):
            x = token.new_empty(v, token.shape[1])
            x[visible] = out.per_input_voxel(layer)
            x[masked] = token
            inputs.append(x)
        stacked = torch.cat(inputs)
        b = batch.batch_size
        layer_id = torch.arange(n_layers, device=coords.device).repeat_interleave(v)
        dec_coords = coords.repeat(n_layers, 1)
        dec_coords[:, 0] = dec_coords[:, 0] + (layer_id * b).int()
        wanted = mask.repeat(n_layers)  # the loss reads the masked voxels of every layer's copy only
        decoded = self.decoder(stacked, dec_coords, out_rows=wanted).features.view(n_layers, v, -1)[:, masked]  # (L, M, d)
        true = batch.true_points[masked]
        count = batch.true_count[masked]
        tmask = batch.teacher_valid[masked]
        target = batch.teacher[masked][tmask]
        pts_losses, t_losses = [], []
        for layer in range(n_layers):
            pred = self.point_heads[layer](decoded[layer]).view(len(masked), self.cfg.pred_points, 3)
            pts_losses.append(chamfer(pred, true, count) if len(masked) else decoded.sum() * 0)
            if tmask.any():
                t_losses.append(F.smooth_l1_loss(self.teacher_heads[layer](decoded[layer][tmask]), target))
            else:
                t_losses.append(decoded.sum() * 0)
        lp, lt = torch.stack(pts_losses), torch.stack(t_losses)
        a = self.alpha.to(lp.device)
        # beta = 0 still keeps the teacher heads in the graph (zero gradient), which DDP requires
        total = (a * lp + (1 - a) * beta * lt).mean() + 0.0 * lt.sum()
        return PretrainLosses(total=total, points=lp.detach(), teacher=lt.detach(),
                              masked_fraction=float(mask.float().mean()))

    @torch.no_grad()
    def probe_activations(self, batch: PretrainBatch, layers: int) -> list[Tensor]:
        """The first ``layers`` layers' activations on all voxels (input resolution): DGPL's probe."""
        out = self.student.encode(batch.voxels)
        return [out.per_input_voxel(layer) for layer in range(layers)]
