"""Res16UNet34C, the MinkowskiEngine U-Net that SLidR / Seal pre-train (the GPICTURE teacher).

Architecture (Choy et al.'s Res16UNet family, variant 34C): a 3x3x3 stem, four
stride-2 downsampling stages of basic residual blocks (2, 3, 4, 6 blocks; 32, 64,
128, 256 channels), four transposed-convolution upsampling stages with skip
concatenation (2 blocks each; 256, 128, 96, 96 channels), and a 1x1 head. Module
names and tensor shapes are those of the SLidR / Seal checkpoints (374 state-dict
tensors, about 37.9 M parameters), so their weights load unchanged. Output features
are L2-normalised per voxel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gpicture.compat import import_minkowski

ME = import_minkowski()

PLANES = (32, 64, 128, 256, 256, 128, 96, 96)
DIMENSION = 3


@contextmanager
def deterministic_coordinates(device: str | torch.device = "cpu") -> Iterator[object]:
    """A MinkowskiEngine coordinate manager whose kernel maps come out in the same order every run.

    Why: MinkowskiEngine 0.5.4 builds a kernel map (for each kernel offset, the (input row,
    output row) pairs) with OpenMP threads that append pairs under an atomic counter
    (``CoordinateMapCPU::kernel_map``, ``#pragma omp atomic capture``), so with more than one
    OpenMP thread the pairs' order differs from run to run. The convolution gathers the rows
    in that order and multiplies them with one OpenBLAS ``sgemm``. In the forward pass, on
    OpenBLAS' Haswell and Zen kernels (AVX2 CPUs without AVX-512, AMD's included), a column's
    result depends on its position in that product, so the same voxel got outputs one float32
    ulp apart run to run (``OPENBLAS_CORETYPE=Haswell``, 11 real nuScenes frames: 0.54 M of
    12.4 M values, about 100 of them one float16 step apart in the cache; the SkylakeX kernels
    happen not to). In the backward pass the rows are the weight gradient's summation axis, so
    training the stand-in differed on every CPU (306 of 374 weight tensors after 3 steps, up
    to 8e-4). With one OpenMP thread the pairs come out in the hash map's order, the same
    every run, whatever OpenBLAS kernel runs the products (those keep their own threads);
    it is also faster on 2 cores (OpenMP's spinning threads no longer compete with OpenBLAS').

    Use the manager for the input ``SparseTensor`` (``coordinate_manager=``; ``device``: the
    coordinates') and run the forward pass inside the block (the backward reuses its kernel maps). Creating it sets the process's OpenMP thread count to 1
    (MinkowskiEngine shares torch's OpenMP runtime, so torch's element-wise ops in the block
    run on one thread too); the count torch had is restored when the block ends.
    """
    threads = torch.get_num_threads()
    # the map type follows the coordinates' device, as MinkowskiEngine's own default manager
    kind = ME.CoordinateMapType.CUDA if torch.device(device).type == "cuda" else ME.CoordinateMapType.CPU
    try:
        yield ME.CoordinateManager(D=DIMENSION, num_threads=1, coordinate_map_type=kind)
    finally:
        torch.set_num_threads(threads)

LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
INIT_DIM = 32


def _bn(channels: int, momentum: float) -> nn.Module:
    return ME.MinkowskiBatchNorm(channels, momentum=momentum)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Module:
    return ME.MinkowskiConvolution(cin, cout, kernel_size=kernel, stride=stride, bias=bias, dimension=DIMENSION)


def _up(cin: int, cout: int) -> nn.Module:
    return ME.MinkowskiConvolutionTranspose(cin, cout, kernel_size=2, stride=2, bias=False, dimension=DIMENSION)


class BasicBlock(nn.Module):
    """conv3-bn-relu-conv3-bn plus the (optionally projected) input, then relu."""

    def __init__(self, cin: int, cout: int, momentum: float) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3)
        self.norm1 = _bn(cout, momentum)
        self.conv2 = _conv(cout, cout, 3)
        self.norm2 = _bn(cout, momentum)
        self.relu = ME.MinkowskiReLU(inplace=True)
        # A 1x1 projection where the channel count changes (module names as in the checkpoints).
        self.downsample = nn.Sequential(_conv(cin, cout, 1), _bn(cout, momentum)) if cin != cout else None

    def forward(self, x):  # noqa: ANN001, ANN201
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out = out + (self.downsample(x) if self.downsample is not None else x)
        return self.relu(out)


def _stage(cin: int, cout: int, blocks: int, momentum: float) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, momentum) for i in range(blocks)])


class Res16UNet34C(nn.Module):
    """The teacher network: sparse voxels (N, in) -> L2-normalised features (N, out)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 64, bn_momentum: float = 0.05,
                 stem_kernel: int = 3, normalize: bool = True) -> None:
        super().__init__()
        m = bn_momentum
        p = PLANES
        self.normalize = normalize
        self.conv0p1s1 = _conv(in_channels, INIT_DIM, stem_kernel)
        self.bn0 = _bn(INIT_DIM, m)
        self.conv1p1s2 = _conv(INIT_DIM, INIT_DIM, 2, 2)
        self.bn1 = _bn(INIT_DIM, m)
        self.block1 = _stage(INIT_DIM, p[0], LAYERS[0], m)
        self.conv2p2s2 = _conv(p[0], p[0], 2, 2)
        self.bn2 = _bn(p[0], m)
        self.block2 = _stage(p[0], p[1], LAYERS[1], m)
        self.conv3p4s2 = _conv(p[1], p[1], 2, 2)
        self.bn3 = _bn(p[1], m)
        self.block3 = _stage(p[1], p[2], LAYERS[2], m)
        self.conv4p8s2 = _conv(p[2], p[2], 2, 2)
        self.bn4 = _bn(p[2], m)
        self.block4 = _stage(p[2], p[3], LAYERS[3], m)
        self.convtr4p16s2 = _up(p[3], p[4])
        self.bntr4 = _bn(p[4], m)
        self.block5 = _stage(p[4] + p[2], p[4], LAYERS[4], m)
        self.convtr5p8s2 = _up(p[4], p[5])
        self.bntr5 = _bn(p[5], m)
        self.block6 = _stage(p[5] + p[1], p[5], LAYERS[5], m)
        self.convtr6p4s2 = _up(p[5], p[6])
        self.bntr6 = _bn(p[6], m)
        self.block7 = _stage(p[6] + p[0], p[6], LAYERS[6], m)
        self.convtr7p2s2 = _up(p[6], p[7])
        self.bntr7 = _bn(p[7], m)
        self.block8 = _stage(p[7] + INIT_DIM, p[7], LAYERS[7], m)
        self.final = _conv(p[7], out_channels, 1, bias=True)
        self.relu = ME.MinkowskiReLU(inplace=True)
        for mod in self.modules():  # the reference initialisation of the batch norms
            if isinstance(mod, ME.MinkowskiBatchNorm):
                nn.init.ones_(mod.bn.weight)
                nn.init.zeros_(mod.bn.bias)

    def forward(self, x):  # noqa: ANN001, ANN201
        cat = ME.cat
        p1 = self.relu(self.bn0(self.conv0p1s1(x)))
        b1 = self.block1(self.relu(self.bn1(self.conv1p1s2(p1))))
        b2 = self.block2(self.relu(self.bn2(self.conv2p2s2(b1))))
        b3 = self.block3(self.relu(self.bn3(self.conv3p4s2(b2))))
        out = self.block4(self.relu(self.bn4(self.conv4p8s2(b3))))
        out = self.block5(cat(self.relu(self.bntr4(self.convtr4p16s2(out))), b3))
        out = self.block6(cat(self.relu(self.bntr5(self.convtr5p8s2(out))), b2))
        out = self.block7(cat(self.relu(self.bntr6(self.convtr6p4s2(out))), b1))
        out = self.block8(cat(self.relu(self.bntr7(self.convtr7p2s2(out))), p1))
        out = self.final(out)
        if not self.normalize:
            return out
        feats = out.F / torch.norm(out.F, p=2, dim=1, keepdim=True).clamp_min(1e-12)
        return ME.SparseTensor(feats, coordinate_map_key=out.coordinate_map_key,
                               coordinate_manager=out.coordinate_manager)
