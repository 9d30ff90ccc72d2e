"""2D trunks on the scattered BEV map, shared by the detection and occupancy heads.

- :class:`BEVBackbone`: the light residual trunk of the CPU profile (one width, a few
  residual pairs; ``stride`` 2 halves the map in its stem).
- :class:`BEVResBackbone`: the multi-scale residual trunk of the DSVT Waymo configuration
  the paper fine-tunes (OpenPCDet's ``BaseBEVResBackbone``: levels of residual basic blocks,
  layer numbers [1, 2, 2], strides [1, 2, 2], widths [128, 128, 256], each level upsampled
  back by [1, 2, 4] to 128 channels and concatenated: 384 output channels).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class BEVBackbone(nn.Module):
    """A light 2D residual trunk on the scattered BEV features. ``stride`` 2 halves the map in
    its stem (the CPU profile's heads then run on 4x fewer cells)."""

    def __init__(self, cin: int, channels: int = 64, blocks: int = 2, stride: int = 1) -> None:
        super().__init__()
        self.stem = conv_bn_relu(cin, channels, stride)
        self.blocks = nn.ModuleList(nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))
                                    for _ in range(blocks))
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for blk in self.blocks:
            x = x + blk(x)
        return x


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-BN, a residual (1x1 conv-BN when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class BEVResBackbone(nn.Module):
    """The reference multi-scale trunk (module docstring). ``stride`` multiplies the first
    level's stride (the output lies on the map's cells times ``stride``)."""

    def __init__(self, cin: int, layer_nums: tuple[int, ...] = (1, 2, 2), strides: tuple[int, ...] = (1, 2, 2),
                 filters: tuple[int, ...] = (128, 128, 256), upsample: tuple[int, ...] = (1, 2, 4),
                 upsample_filters: tuple[int, ...] = (128, 128, 128), stride: int = 1) -> None:
        super().__init__()
        strides = (strides[0] * stride, *strides[1:])
        self.levels = nn.ModuleList()
        self.ups = nn.ModuleList()
        c = cin
        for n, s, f, u, uf in zip(layer_nums, strides, filters, upsample, upsample_filters, strict=True):
            self.levels.append(nn.Sequential(BasicBlock(c, f, s), *(BasicBlock(f, f) for _ in range(n))))
            deconv = nn.ConvTranspose2d(f, uf, u, stride=u, bias=False) if u > 1 else nn.Conv2d(f, uf, 1, bias=False)
            self.ups.append(nn.Sequential(deconv, nn.BatchNorm2d(uf, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)))
            c = f
        self.out_channels = sum(upsample_filters)

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for level, up in zip(self.levels, self.ups, strict=True):
            x = level(x)
            outs.append(up(x))
        return torch.cat(outs, 1)
