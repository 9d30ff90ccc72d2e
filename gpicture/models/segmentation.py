"""3D semantic segmentation on the student: per-point logits through an spconv decoder.

The DSVT's first-stage activations (full input resolution) and its last-stage features
(pooled along z, broadcast back to the input voxels) are fused per input voxel, refined by
two submanifold sparse convolutions on the canonical grid (spconv), and gathered back to
the points, where they are concatenated with a small per-point encoding (position in the
point-cloud range, offset to the voxel centre, the point features) and classified. Points
outside the range have no voxel: their voxel part is zero and only the point encoding
speaks for them, so every point gets a prediction (the datasets' formats need one per point).

The loss is cross entropy plus the Lovász-softmax surrogate of the Jaccard index
(Berman et al., CVPR 2018), both over the labelled points only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpicture.data.batch import VoxelBatch, move_to
from gpicture.data.spec import IGNORE_INDEX
from gpicture.models.student import Student
from gpicture.ops.scatter import scatter_mean


@dataclass
class SegmentationBatch:
    """Frames of a batch: every point feeds the encoder, the rows ``seg_index`` are segmented."""

    voxels: VoxelBatch
    seg_index: Tensor  # (P,) int64 rows of `voxels.points` to segment (nuScenes: keyframe points; training: labelled)
    labels: Tensor  # (P,) int64 training class index, IGNORE_INDEX where unlabelled
    seg_ptr: Tensor  # (B + 1,) int64 CSR pointers of each frame's rows in seg_index / labels

    @property
    def batch_size(self) -> int:
        return self.voxels.batch_size

    def to(self, device: torch.device | str) -> SegmentationBatch:
        return move_to(self, device)


def lovasz_softmax(probs: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Lovász-softmax loss of class probabilities ``probs`` (P, C) against ``labels`` (P,),
    averaged over the classes present in the labels; 0 (with a gradient path) when no point
    is labelled.

    For each class c the errors e_i = |[y_i = c] - p_i(c)| are sorted in decreasing order
    and dotted with the gradient of the Lovász extension of the Jaccard loss, which for
    the sorted ground truth g is the discrete difference of
    1 - (G - cumsum(g)) / (G + cumsum(1 - g)), G = sum(g). All classes at once: one sort of
    the (P, C) error matrix along the points.
    """
    valid = labels != ignore_index
    p, y = probs[valid], labels[valid]
    if len(y) == 0:
        return probs.sum() * 0.0
    fg = F.one_hot(y, probs.shape[1]).to(p.dtype)  # (P, C)
    errors = (fg - p).abs()
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)
    fg_sorted = torch.gather(fg, 0, order)
    gts = fg_sorted.sum(0)  # (C,)
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], 0)
    per_class = (errors_sorted * grad).sum(0)
    present = gts > 0
    return per_class[present].mean()


class SegDecoder(nn.Module):
    """Per-input-voxel DSVT features (early + late) -> spconv refinement -> per-point logits.

    The refinement runs on the student's Cartesian grid, or (``cylinder`` = (n_rho, n_phi, n_z),
    the paper's fine-tuning grid, 480 x 360 x 32 as Cylinder3D) on a cylindrical grid: the fused
    features of each point's Cartesian voxel are averaged into its cylindrical cell (rho from 0
    to the range's largest |x| or |y|, further points in the outer ring; phi over [-pi, pi);
    z over the range), refined there by the same two submanifold convolutions, and read back
    per point. Cells are equal in angle, so they grow with the distance as the returns thin out.
    """

    def __init__(self, d_model: int, num_point_features: int, num_classes: int, grid_zyx: tuple[int, int, int],
                 voxel_size: tuple[float, float, float], point_cloud_range: tuple[float, ...], hidden: int = 64,
                 cylinder: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        import spconv.pytorch as spconv  # lazy: spconv only to build the decoder

        from gpicture.compat import spconv_algo  # lazy: with spconv, whose import is slow

        self.grid_zyx = tuple(int(v) for v in grid_zyx)
        self.cylinder = None if cylinder is None else tuple(int(v) for v in cylinder)
        self.max_rho = float(max(abs(v) for v in (*point_cloud_range[0:2], *point_cloud_range[3:5])))
        self.register_buffer("voxel_size", torch.tensor(voxel_size, dtype=torch.float32), persistent=False)
        self.register_buffer("lo", torch.tensor(point_cloud_range[:3], dtype=torch.float32), persistent=False)
        self.register_buffer("hi", torch.tensor(point_cloud_range[3:], dtype=torch.float32), persistent=False)
        self.fuse = nn.Sequential(nn.Linear(2 * d_model, hidden, bias=False), nn.BatchNorm1d(hidden, eps=1e-3, momentum=0.01),
                                  nn.ReLU())
        algo = spconv_algo()
        self.conv = spconv.SparseSequential(
            spconv.SubMConv3d(hidden, hidden, 3, padding=1, bias=False, indice_key="seg_subm", algo=algo),
            nn.BatchNorm1d(hidden, eps=1e-3, momentum=0.01), nn.ReLU(),
            spconv.SubMConv3d(hidden, hidden, 3, padding=1, bias=False, indice_key="seg_subm", algo=algo),
            nn.BatchNorm1d(hidden, eps=1e-3, momentum=0.01), nn.ReLU(),
        )
        self.point = nn.Sequential(nn.Linear(6 + num_point_features, hidden, bias=False),
                                   nn.BatchNorm1d(hidden, eps=1e-3, momentum=0.01), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden, bias=False), nn.BatchNorm1d(hidden, eps=1e-3, momentum=0.01),
                                  nn.ReLU(), nn.Linear(hidden, num_classes))

    def cylinder_cells(self, points: Tensor, point_batch: Tensor) -> tuple[Tensor, Tensor]:
        """(cell (P,) int64 of each point, coords (M, 4) int32 b, z, phi, rho of the occupied cells)."""
        nr, nphi, nz = self.cylinder
        rho = torch.hypot(points[:, 0], points[:, 1])
        phi = torch.atan2(points[:, 1], points[:, 0])
        ir = (rho / self.max_rho * nr).long().clamp(0, nr - 1)
        ip = ((phi + torch.pi) / (2 * torch.pi) * nphi).long().clamp(0, nphi - 1)
        iz = ((points[:, 2] - self.lo[2]) / (self.hi[2] - self.lo[2]) * nz).long().clamp(0, nz - 1)
        key = ((point_batch.long() * nz + iz) * nphi + ip) * nr + ir
        uniq, cell = torch.unique(key, return_inverse=True)
        b, rem = torch.div(uniq, nz * nphi * nr, rounding_mode="floor"), uniq % (nz * nphi * nr)
        z, rem = torch.div(rem, nphi * nr, rounding_mode="floor"), rem % (nphi * nr)
        return cell, torch.stack([b, z, torch.div(rem, nr, rounding_mode="floor"), rem % nr], 1).int()

    def forward(self, early: Tensor, late: Tensor, voxel_coords: Tensor, batch_size: int, points: Tensor,
                features: Tensor, point_voxel: Tensor, point_batch: Tensor | None = None) -> Tensor:
        """``early``/``late`` (V, d) per input voxel; ``points`` (P, 3), ``features`` (P, F),
        ``point_voxel`` (P,) and (cylindrical grid) ``point_batch`` (P,) of the points to classify
        -> logits (P, num_classes)."""
        import spconv.pytorch as spconv  # lazy: as in __init__

        x = self.fuse(torch.cat([early, late], 1))
        inside = point_voxel >= 0
        pv = point_voxel.clamp_min(0).long()
        centre = (voxel_coords[pv][:, [3, 2, 1]].float() + 0.5) * self.voxel_size + self.lo
        rel = torch.where(inside[:, None], (points - centre) / self.voxel_size, torch.zeros_like(points))
        pos = 2.0 * (points - self.lo) / (self.hi - self.lo) - 1.0  # [-1, 1] inside the range
        p = self.point(torch.cat([pos, rel, features], 1))
        if self.cylinder is None:
            sp = spconv.SparseConvTensor(x, voxel_coords.int(), list(self.grid_zyx), batch_size)
            v = self.conv(sp).features + x  # residual: the convolutions refine, the fused features remain
            vox = v[pv] * inside[:, None].to(v.dtype) if len(v) else p.new_zeros(len(pv), v.shape[1])
        else:
            px = x[pv] * inside[:, None].to(x.dtype) if len(x) else p.new_zeros(len(pv), x.shape[1])
            cell, coords = self.cylinder_cells(points, point_batch)
            feats = scatter_mean(px, cell, dim=0, dim_size=len(coords))
            nr, nphi, nz = self.cylinder
            c = self.conv(spconv.SparseConvTensor(feats, coords, [nz, nphi, nr], batch_size)).features + feats
            vox = c[cell]
        return self.head(torch.cat([vox, p], 1))


class Segmenter(nn.Module):
    """Student backbone + sparse-convolution decoder -> per-point class logits."""

    def __init__(self, student: Student, num_classes: int, hidden: int = 64, lovasz_weight: float = 1.0,
                 cylinder: tuple[int, int, int] | None = None) -> None:
        """``cylinder``: (n_rho, n_phi, n_z) of the decoder's cylindrical grid; None: the student's
        Cartesian grid (see :class:`SegDecoder`)."""
        super().__init__()
        self.student = student
        self.num_classes = int(num_classes)
        self.lovasz_weight = float(lovasz_weight)
        cfg = student.cfg
        nx, ny, nz = cfg.dsvt.sparse_shape
        self.early_layer = 2 * cfg.dsvt.blocks[0] - 1  # the last layer of the first (full-resolution) stage
        self.decoder = SegDecoder(cfg.dsvt.d_model, len(cfg.point_features), self.num_classes, (nz, ny, nx),
                                  cfg.voxel_size, cfg.point_cloud_range, hidden, cylinder)

    def forward(self, batch: SegmentationBatch) -> Tensor:
        """Logits (P, num_classes) of the points ``batch.seg_index``."""
        v = batch.voxels
        out = self.student.encode(v)
        idx = batch.seg_index
        point_batch = torch.repeat_interleave(torch.arange(v.batch_size, device=idx.device), torch.diff(batch.seg_ptr))
        return self.decoder(out.per_input_voxel(self.early_layer), out.per_input_voxel(), v.voxel_coords,
                            v.batch_size, v.points[idx], v.features[idx], v.point_voxel[idx], point_batch)

    def loss(self, batch: SegmentationBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross entropy (unlabelled points ignored) + ``lovasz_weight`` x Lovász-softmax."""
        return self.loss_from_logits(self(batch), batch.labels)

    def loss_from_logits(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The loss of logits (P, C) computed elsewhere (under DDP: by the wrapper's forward)
        against labels (P,) training class indices, IGNORE_INDEX where unlabelled."""
        logits = logits.float()  # the losses in float32 under AMP
        if not bool((labels != IGNORE_INDEX).any()):
            return logits.sum() * 0.0, {"ce": 0.0, "lovasz": 0.0}
        ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        lov = lovasz_softmax(logits.softmax(1), labels)
        return ce + self.lovasz_weight * lov, {"ce": float(ce.detach()), "lovasz": float(lov.detach())}

    @torch.no_grad()
    def predict(self, batch: SegmentationBatch) -> Tensor:
        """(P,) int64 training class index (argmax) of the points ``batch.seg_index``."""
        return self(batch).argmax(1)
