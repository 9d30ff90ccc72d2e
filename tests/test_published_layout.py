"""The method and DSVT as published (issue 16): each test fails on the departures the
line-by-line comparison with the paper and the reference code found."""

from __future__ import annotations

import torch

from gpicture.models.dsvt import DSVTConfig, DSVTEncoder
from gpicture.models.dsvt.layers import SetAttentionLayer
from gpicture.models.vfe import DynamicVFE


def _two_stage(shape: tuple[int, int, int] = (48, 12, 1)) -> DSVTEncoder:
    torch.manual_seed(0)
    cfg = DSVTConfig(sparse_shape=shape, d_model=16, nhead=2, dim_feedforward=32, set_size=8,
                     window_shapes=((12, 12, 1), (12, 12, 1)), blocks=(1, 1), z_strides=((1, 1, 1),),
                     shift=(6, 6, 0), hybrid_factor=(2, 2, 1))
    return DSVTEncoder(cfg).eval()


def test_dsvt_uses_both_window_configurations_and_crosses_tile_borders() -> None:
    enc = _two_stage()
    # two voxels on either side of the x = 12 tile border (12 x 12 windows): the unshifted
    # partition separates them, the shifted 24 x 24 hybrid window (shift 6) joins them
    coords = torch.tensor([[0, 0, 5, 11], [0, 0, 5, 12], [0, 0, 3, 40], [0, 0, 7, 30]], dtype=torch.int32)
    x = torch.randn(4, 16)
    used = []
    original = SetAttentionLayer.forward

    def spy(self, feats, part, rel, **kw):  # noqa: ANN001, ANN202
        used.append(part)
        return original(self, feats, part, rel, **kw)

    SetAttentionLayer.forward = spy
    try:
        out = enc(x, coords).features
    finally:
        SetAttentionLayer.forward = original
    parts = [enc.partitions(coords, s, enc.cfg.sparse_shape) for s in range(2)]
    # stage 0 (block 0): the plain windows; stage 1 (block 1): the shifted ones, as DSVT's block counter
    assert [p.num_sets for p in used] == [parts[0][0][0].num_sets, parts[0][0][1].num_sets,
                                          parts[1][1][0].num_sets, parts[1][1][1].num_sets]
    assert torch.equal(used[2].voxel, parts[1][1][0].voxel) and not torch.equal(used[0].voxel, used[2].voxel)
    moved = x.clone()
    moved[1] += 5.0  # change the voxel across the border only
    out2 = enc(moved, coords).features
    assert (out2[0] - out[0]).abs().max() > 1e-3  # information crossed the tile border
    assert torch.allclose(out2[2], out[2], atol=1e-6)  # a voxel in no shared window is untouched


def test_set_attention_layer_has_the_reference_outer_residual_and_norm() -> None:
    """DSVT_EncoderLayer wraps SetAttention (attention + FFN, each with residual and norm) in
    ``norm(identity + set_attention(x))``: with the attention and FFN outputs zeroed and the
    inner norm given an affine (2, 1), the reference output is still a unit layer-normed row,
    while a layer without the outer residual + norm returns 2 * LN(x) + 1."""
    torch.manual_seed(0)
    layer = SetAttentionLayer(16, 2, 32).eval()
    with torch.no_grad():
        layer.attn.out_proj.weight.zero_()
        layer.attn.out_proj.bias.zero_()
        layer.ffn[-1].weight.zero_()
        layer.ffn[-1].bias.zero_()
        layer.norm2.weight.fill_(2.0)
        layer.norm2.bias.fill_(1.0)
    coords = torch.tensor([[0, 0, 0, i] for i in range(6)], dtype=torch.int32)
    enc = _two_stage((6, 1, 1))
    part, _, rel = enc.partitions(coords, 0, (6, 1, 1))[0]
    x = torch.randn(6, 16) * 3 + 2
    y = layer(x, part, rel)
    assert torch.allclose(y.mean(1), torch.zeros(6), atol=1e-4)
    assert torch.allclose(y.std(1, unbiased=False), torch.ones(6), atol=1e-2)


def test_vfe_layers_before_the_last_have_half_their_filters() -> None:
    """The reference PFN layer halves a non-last layer's output (its concatenation with the
    voxel max restores the width): [64, 64] on 10 + 2 inputs is 12 -> 32 (+32 max) -> 64."""
    vfe = DynamicVFE(2, (0.4, 0.4, 0.4), (-10, -10, -2, 10, 10, 2), (64, 64))
    assert [tuple(layer["linear"].weight.shape) for layer in vfe.layers] == [(32, 11), (64, 64)]
    n_params = sum(p.numel() for p in vfe.parameters())
    assert n_params == 11 * 32 + 2 * 32 + 64 * 64 + 2 * 64  # linear (no bias) + BN affine, by hand
    pts = torch.rand(50, 3) * 4
    out = vfe(pts, torch.rand(50, 2), torch.arange(50) % 5, torch.tensor([[0, 5, 25 + i, 25] for i in range(5)]))
    assert out.shape == (5, 64)


# -- detection as in the DSVT Waymo configuration --------------------------------------------


def test_paired_iou_3d_matches_hand_values_and_the_waymo_metric_iou() -> None:
    import numpy as np

    from gpicture.eval.waymo_boxes import iou_3d
    from gpicture.ops import paired_iou_3d

    a = torch.tensor([[0.0, 0, 0, 4, 2, 2, 0], [0, 0, 0, 4, 2, 2, 0], [0, 0, 0, 4, 2, 2, 0.3]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0, 0, 4, 2, 2, 0], [2, 0, 0, 4, 2, 2, 0], [0, 0, 5, 4, 2, 2, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(paired_iou_3d(a, b), torch.tensor([1.0, 1 / 3, 0.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    ra = torch.cat([torch.rand(50, 3, generator=g) * 2, torch.rand(50, 3, generator=g) * 3 + 0.5,
                    torch.rand(50, 1, generator=g) * 6], 1).double()
    rb = ra + torch.randn(50, 7, generator=g).double() * torch.tensor([0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.5]).double()
    rb[:, 3:6] = rb[:, 3:6].abs() + 0.2
    want = np.diag(iou_3d(ra.numpy(), rb.numpy()))
    np.testing.assert_allclose(paired_iou_3d(ra, rb).numpy(), want, atol=1e-6)


def _grid():
    from gpicture.models.detection.targets import BEVGrid

    return BEVGrid((-8.0, -8.0, -2.0, 8.0, 8.0, 4.0), (0.5, 0.5))


def test_reference_trunk_has_the_dsvt_widths() -> None:
    from gpicture.models.detection.bev import BEVResBackbone

    trunk = BEVResBackbone(192)
    x = torch.randn(1, 192, 32, 32)
    assert trunk(x).shape == (1, 384, 32, 32)  # 3 x 128 upsampled channels at the input resolution

    def block(cin, cout, down):  # conv3x3 + BN, conv3x3 + BN, (1x1 + BN): weights by hand
        return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout + (cin * cout + 2 * cout if down else 0)

    levels = [block(192, 128, True) + block(128, 128, False),
              block(128, 128, True) + 2 * block(128, 128, False),
              block(128, 256, True) + 2 * block(256, 256, False)]
    ups = [128 * 128 + 2 * 128, 128 * 128 * 4 + 2 * 128, 256 * 128 * 16 + 2 * 128]
    assert sum(p.numel() for p in trunk.parameters()) == sum(levels) + sum(ups)


def test_iou_branch_learns_the_iou_and_rectifies_scores() -> None:
    from gpicture.models.detection.centerpoint import CenterPoint, HeadConfig
    from gpicture.ops import paired_iou_3d

    torch.manual_seed(0)
    cfg = HeadConfig(trunk_channels=16, iou_rectifier=(0.68, 0.71, 0.65), nms_thresholds=(0.7, 0.6, 0.55))
    model = CenterPoint(8, [["TYPE_VEHICLE", "TYPE_PEDESTRIAN", "TYPE_CYCLIST"]], _grid(), cfg)
    bev = torch.randn(1, 8, 32, 32)
    box = torch.tensor([[1.2, -0.6, 0.4, 4.2, 1.9, 1.6, 0.7]])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        loss, logs = model.loss(model(bev), [box], [torch.tensor([0])], [torch.zeros(1, 2)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert "task0_iou" in logs
    model.eval()
    out = model(bev)[0]
    # at the box's centre cell the IoU branch predicts the IoU its own decoded box has with the truth
    centre = torch.tensor([[int((box[0, 1] + 8) / 0.5) * 32 + int((box[0, 0] + 8) / 0.5)]])
    decoded = model.boxes_at(out.reg, centre)[0]
    actual = float(paired_iou_3d(decoded.double(), box.double()))
    predicted = float((out.iou.reshape(-1)[centre[0, 0]] + 1) / 2)
    assert actual > 0.5 and abs(predicted - actual) < 0.1
    assert out.iou is not None and out.iou.shape == (1, 1, 32, 32)
    det = model.decode([out], score_threshold=0.05)[0]
    raw = model.decode([type(out)(out.heat, out.reg, None)], score_threshold=0.05)[0]  # without rectification
    cell = int(det.boxes[0, 1].sub(-8.0).div(0.5).floor() * 32 + det.boxes[0, 0].sub(-8.0).div(0.5).floor())
    iou = float(((out.iou.reshape(-1)[cell] + 1) / 2).clamp(0, 1))
    torch.testing.assert_close(det.scores[0], raw.scores[0] ** (1 - 0.68) * iou ** 0.68, rtol=1e-4, atol=1e-5)


def test_nms_uses_each_classes_own_threshold() -> None:
    from gpicture.models.detection.centerpoint import CenterPoint, HeadConfig, TaskOutput

    grid = _grid()
    heads = {t: CenterPoint(8, [["a", "b"]], grid, HeadConfig(trunk_channels=8, nms_thresholds=(t, 0.2)))
             for t in (0.4, 0.6)}
    heat = torch.full((1, 2, 32, 32), -9.0)
    heat[0, 0, 16, 16], heat[0, 0, 16, 18] = 4.0, 3.0  # two class-a peaks 1 m apart
    reg = torch.zeros(1, 10, 32, 32)
    reg[:, 3] = float(torch.tensor(4.0).log())  # 4 x 2 x 2 m boxes: 1 m apart along x, BEV IoU 0.6
    reg[:, 4] = float(torch.tensor(2.0).log())
    reg[:, 5] = float(torch.tensor(2.0).log())
    reg[:, 7] = 1.0  # heading 0
    outputs = [TaskOutput(heat, reg, None)]
    assert len(heads[0.6].decode(outputs)[0].boxes) == 2  # IoU 0.6 is not above 0.6: both kept
    assert len(heads[0.4].decode(outputs)[0].boxes) == 1


# -- segmentation on the paper's cylindrical grid --------------------------------------------


def test_cylindrical_decoder_cells_follow_range_and_angle() -> None:
    from gpicture.models.segmentation import SegDecoder

    dec = SegDecoder(16, 2, 5, (20, 256, 256), (0.4, 0.4, 0.4), (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), 8,
                     cylinder=(480, 360, 32))
    pts = torch.tensor([[10.0, 0.0, 0.0], [10.02, 0.0, 0.0], [0.0, 10.0, 0.0], [40.0, 0.0, 0.0],
                        [39.0, 4.0, 0.0], [10.0, 0.0, 0.0], [100.0, 0.0, -9.0]])
    batch = torch.tensor([0, 0, 0, 0, 0, 1, 0])
    cell, coords = dec.cylinder_cells(pts, batch)
    assert cell[0] == cell[1] and cell[0] != cell[5]  # same ring and sector; another frame, another cell
    b, z, phi, rho = coords[cell].long().T
    assert rho[0] == int(10 / 51.2 * 480) and phi[0] == 180 and phi[2] == 270  # phi = 0 -> sector 180, pi/2 -> 270
    assert rho[6] == 479 and z[6] == 0  # beyond the range: the outer ring, clamped in z
    # 1 m apart across the line of sight: one sector at 10 m is 0.17 m wide, at 40 m 0.70 m
    assert phi[4] != phi[3]
    torch.manual_seed(0)
    dec.eval()
    early, late = torch.randn(3, 16), torch.randn(3, 16)
    vc = torch.tensor([[0, 12, 128, 153], [0, 12, 153, 128], [0, 12, 128, 228]], dtype=torch.int32)
    pv = torch.tensor([0, 0, 1, 2, 2, 0, -1])
    logits = dec(early, late, vc, 2, pts, torch.randn(7, 2), pv, batch)
    assert logits.shape == (7, 5) and torch.isfinite(logits).all()


def test_segmentation_task_builds_the_cylindrical_decoder_from_params() -> None:
    from gpicture.data.spec import NUSCENES
    from gpicture.params import load_section, with_profile
    from gpicture.tasks.segmentation import SegmentationTask

    sec = load_section("params.yaml", "finetune", "segmentation")
    small = SegmentationTask().settings(with_profile(sec, "small", "nuscenes"), NUSCENES).head
    full = SegmentationTask().settings(with_profile(sec, "full", "nuscenes"), NUSCENES).head
    assert small.grid == "cartesian" and full.grid == "cylindrical" and full.cylinder == (480, 360, 32)
