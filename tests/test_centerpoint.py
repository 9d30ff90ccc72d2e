"""CenterPoint targets, losses and decoding (issue 8, in progress)."""

from __future__ import annotations

import torch

from gpicture.models.detection.centerpoint import CenterPoint, HeadConfig, focal_loss
from gpicture.models.detection.targets import BEVGrid, build_targets, gaussian_radius

GRID = BEVGrid((-20.0, -20.0, -3.0, 20.0, 20.0, 3.0), (0.5, 0.5))


def test_targets_put_peaks_at_box_centres() -> None:
    boxes = [torch.tensor([[1.3, -2.6, 0.5, 4.0, 2.0, 1.5, 0.3], [-10.0, 5.0, 0.0, 0.8, 0.6, 1.7, 1.0]])]
    tg = build_targets(boxes, [torch.tensor([0, 1])], [torch.tensor([[1.0, 0.0], [0.0, 0.5]])], 2, GRID)
    assert tg.heatmap.shape == (1, 2, 80, 80)
    ix, iy = int((1.3 + 20) / 0.5), int((-2.6 + 20) / 0.5)
    assert tg.heatmap[0, 0, iy, ix] == 1.0 and tg.heatmap[0, 1, iy, ix] < 1.0
    assert tg.heatmap[0, 0].max() == 1.0 and (tg.heatmap[0, 0] > 0).sum() > 9
    assert tg.index[0, 0] == iy * 80 + ix and tg.mask[0].tolist()[:3] == [True, True, False]
    torch.testing.assert_close(tg.regression[0, 0, :2], torch.tensor([(1.3 + 20) / 0.5 - ix, (-2.6 + 20) / 0.5 - iy]))
    torch.testing.assert_close(tg.regression[0, 0, 6:8], torch.tensor([torch.sin(torch.tensor(0.3)), torch.cos(torch.tensor(0.3))]))
    assert gaussian_radius(torch.tensor(8.0), torch.tensor(4.0)) > 2


def test_focal_loss_is_small_for_the_target() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 3] = 1.0
    good = torch.full_like(target, -9.0)
    good[0, 0, 3, 3] = 9.0
    assert focal_loss(good, target) < 1e-3 < focal_loss(torch.zeros_like(target), target)


def test_head_learns_and_decodes_a_box() -> None:
    torch.manual_seed(0)
    model = CenterPoint(8, [["car"], ["pedestrian"]], GRID, HeadConfig(trunk_channels=16))
    bev = torch.randn(1, 8, 80, 80)
    box = torch.tensor([[2.2, 3.1, 0.4, 4.2, 1.9, 1.6, 0.7]])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        loss, _ = model.loss(model(bev), [box], [torch.tensor([0])], [torch.tensor([[2.0, 0.0]])])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    det = model.decode(model(bev), score_threshold=0.3)[0]
    assert len(det.boxes) >= 1 and int(det.labels[0]) == 0
    torch.testing.assert_close(det.boxes[0, :2], box[0, :2], atol=0.2, rtol=0)
    torch.testing.assert_close(det.boxes[0, 3:6], box[0, 3:6], atol=0.3, rtol=0)
