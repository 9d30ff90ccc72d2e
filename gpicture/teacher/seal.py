"""The frozen Seal teacher: Res16UNet34C with loaded (or seeded random) weights."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from gpicture.teacher.checkpoint import check_layout, file_sha256, read_checkpoint
from gpicture.teacher.res16unet import ME, Res16UNet34C, deterministic_coordinates

log = logging.getLogger(__name__)


class SealTeacher:
    """A frozen Res16UNet34C (in 1 -> out 64, L2-normalised features) in eval mode."""

    def __init__(self, net: Res16UNet34C, checkpoint: Path | None, sha256: str | None, seed: int, device: str,
                 metadata: dict | None = None) -> None:
        self.net = net.eval().to(device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.checkpoint = checkpoint
        self.sha256 = sha256
        self.seed = seed
        self.device = device
        self.metadata = metadata

    @property
    def kind(self) -> str:
        """``random`` (a seeded initialisation, here or saved by ``teacher-fit --init random``),
        ``standin`` (trained by ``gpicture teacher-fit`` on the synthetic pool) or ``checkpoint``
        (a Seal / SLidR file)."""
        if self.checkpoint is None:
            return "random"
        return str((self.metadata or {}).get("init", "checkpoint"))

    @property
    def is_random(self) -> bool:
        """True when the weights are a seeded random initialisation."""
        return self.kind == "random"

    @property
    def description(self) -> str:
        meta = self.metadata or {}
        if self.is_random:
            seed = meta.get("seed", self.seed)
            return f"RANDOM INITIALISATION (seed {seed}): no Seal checkpoint configured; features are not semantic"
        if self.kind == "standin":
            return (f"stand-in teacher (trained on synthetic pool, {meta.get('pool_scenes')} scenes): "
                    f"{self.checkpoint} (sha256 {self.sha256})")
        return f"Seal checkpoint {self.checkpoint} (sha256 {self.sha256})"

    @classmethod
    def from_checkpoint(cls, path: str | Path | None, device: str = "cpu", seed: int = 0) -> SealTeacher:
        """Load a SLidR / Seal checkpoint strictly, or seed a random teacher when ``path`` is None."""
        torch.manual_seed(seed)
        net = Res16UNet34C(in_channels=1, out_channels=64, bn_momentum=0.05)
        if path is None:
            log.warning("teacher: no checkpoint configured, using a seeded random initialisation (seed %d)", seed)
            return cls(net, None, None, seed, device)
        path = Path(path)
        weights, meta = read_checkpoint(path)
        check_layout(path, weights, net.state_dict())
        net.load_state_dict(weights, strict=True)
        return cls(net, path, file_sha256(path), seed, device, metadata=meta)

    @torch.no_grad()
    def encode(self, coords, feats) -> np.ndarray:  # noqa: ANN001
        """Features of quantized voxels.

        ``coords`` int32 (N, 4) batch, x, y, z (MinkowskiEngine's convention, already
        quantized); ``feats`` float32 (N, 1). Returns float32 (N, 64), rows in input order
        (duplicated coordinates get the same row).
        """
        c = torch.as_tensor(np.asarray(coords), dtype=torch.int32)
        f = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        if c.ndim != 2 or c.shape[1] != 4 or f.shape != (len(c), 1):
            raise ValueError(f"encode: coords must be (N, 4) and feats (N, 1), got {tuple(c.shape)} and {tuple(f.shape)}")
        if len(c) == 0:
            return np.zeros((0, 64), np.float32)
        # Kernel maps in the same order every run: the same input gives the same bytes (see
        # deterministic_coordinates; the products keep OpenBLAS' threads).
        with deterministic_coordinates(self.device) as manager:
            x = ME.SparseTensor(f.to(self.device), coordinates=c.to(self.device), coordinate_manager=manager,
                                quantization_mode=ME.SparseTensorQuantizationMode.UNWEIGHTED_AVERAGE)
            out = self.net(x)
            # Back to the caller's rows: the sparse tensor may have reordered / merged them.
            rows = out.features_at_coordinates(c.to(self.device).float())
        return rows.cpu().numpy().astype(np.float32)
