"""Live checks of everything the pipeline depends on (``gpicture doctor``).

Each check imports a dependency, reports its version and performs a real, tiny
operation with it, so a broken build (an ABI mismatch, a missing BLAS, a CPU-only
spconv asked for CUDA streams) shows here rather than an hour into a run.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one dependency check."""

    name: str
    version: str  # "-" when the package could not be imported
    ok: bool
    detail: str  # what the live check did, or why it failed
    required: bool
    seconds: float


def _check_python() -> tuple[str, str]:
    if sys.version_info[:2] != (3, 11):
        raise RuntimeError(f"Python 3.11 is required, this is {platform.python_version()}")
    return platform.python_version(), f"{platform.python_implementation()} on {platform.machine()}"


def _check_torch() -> tuple[str, str]:
    import torch

    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    if float((a @ a.T).sum()) != 83.0:
        raise RuntimeError("matmul gave a wrong result")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        where = f"CUDA {torch.version.cuda}: {torch.cuda.device_count()} device(s): {names}"
    else:
        where = "CUDA not available: CPU only"
    return torch.__version__, f"matmul ok; {where}"


def _check_spconv() -> tuple[str, str]:
    import spconv
    import spconv.pytorch as spconv_torch
    import torch

    from gpicture.compat import spconv_algo  # lazy: a check reports a broken import, never crashes

    torch.manual_seed(0)
    coords = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2], [0, 2, 2, 2]], dtype=torch.int32)
    feats = torch.randn(3, 4)
    conv = spconv_torch.SubMConv3d(4, 8, 3, bias=False, algo=spconv_algo())
    x = spconv_torch.SparseConvTensor(feats, coords, spatial_shape=[4, 4, 4], batch_size=1)
    y = conv(x)
    if tuple(y.features.shape) != (3, 8) or not torch.isfinite(y.features).all():
        raise RuntimeError(f"submanifold conv gave features of shape {tuple(y.features.shape)}")
    return spconv.__version__, f"SubMConv3d 4->8 on 3 voxels ({spconv_algo().name})"


def _check_minkowski() -> tuple[str, str]:
    import torch

    from gpicture.compat import import_minkowski  # lazy: a check reports a broken import, never crashes

    ME = import_minkowski()  # noqa: N806
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 1]], dtype=torch.int32)
    x = ME.SparseTensor(torch.ones(3, 2), coordinates=coords)
    conv = ME.MinkowskiConvolution(2, 4, kernel_size=3, dimension=3)
    y = conv(x)
    if tuple(y.F.shape) != (3, 4):
        raise RuntimeError(f"sparse conv gave features of shape {tuple(y.F.shape)}")
    return ME.__version__, "MinkowskiConvolution 2->4 on 3 points"


def _check_torch_scatter() -> tuple[str, str]:
    import torch
    import torch_scatter

    out = torch_scatter.segment_csr(torch.arange(5.0), torch.tensor([0, 2, 5]), reduce="sum")
    if out.tolist() != [1.0, 9.0]:
        raise RuntimeError(f"segment_csr gave {out.tolist()}, expected [1.0, 9.0]")
    return torch_scatter.__version__, "segment_csr sum ok"


def _check_zarr() -> tuple[str, str]:
    import numpy as np
    import zarr
    from zarr.codecs import BloscCodec

    data = np.arange(1000, dtype=np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(
            store=str(Path(tmp) / "a.zarr"),
            shape=data.shape,
            chunks=(256,),
            dtype=data.dtype,
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
        )
        arr[:] = data
        back = zarr.open_array(str(Path(tmp) / "a.zarr"), mode="r")[:]
    if not np.array_equal(back, data):
        raise RuntimeError("a Blosc/zstd array did not read back equal")
    return zarr.__version__, "Blosc/zstd array written and read back"


def _check_numcodecs() -> tuple[str, str]:
    import numcodecs
    import numpy as np

    codec = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    data = np.linspace(0, 1, 512, dtype=np.float32)
    if not np.array_equal(np.frombuffer(codec.decode(codec.encode(data)), np.float32), data):
        raise RuntimeError("Blosc/zstd round trip changed the data")
    return numcodecs.__version__, "Blosc/zstd round trip"


def _check_dvc() -> tuple[str, str]:
    exe = Path(sys.executable).with_name("dvc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dvc"]
    proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc --version` failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip(), f"`{Path(cmd[0]).name} --version` ran"


def _check_nuscenes() -> tuple[str, str]:
    from importlib.metadata import version

    import numpy as np
    from nuscenes.nuscenes import NuScenes  # noqa: F401  (importable is part of the check)
    from nuscenes.utils.data_classes import Box
    from nuscenes.utils.geometry_utils import points_in_box
    from pyquaternion import Quaternion

    box = Box([0.0, 0.0, 0.0], [2.0, 4.0, 1.5], Quaternion(axis=[0, 0, 1], angle=0.3))
    pts = np.array([[0.0, 0.1, 3.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]])  # (3, N)
    inside = points_in_box(box, pts)
    if inside.tolist() != [True, True, False]:  # (0,0,0), (0.1,0,0) in; (3,5,0) out
        raise RuntimeError(f"points_in_box gave {inside.tolist()}")
    return version("nuscenes-devkit"), "NuScenes importable; points_in_box ok"


def _check_waymo() -> tuple[str, str]:
    from importlib.metadata import version

    from waymo_open_dataset import dataset_pb2

    frame = dataset_pb2.Frame()
    frame.context.name = "doctor"
    frame.timestamp_micros = 123
    laser = frame.lasers.add()
    laser.name = dataset_pb2.LaserName.TOP
    laser.ri_return1.range_image_compressed = b"\x00\x01"
    back = dataset_pb2.Frame.FromString(frame.SerializeToString())
    if back != frame:
        raise RuntimeError("Frame proto round trip changed the message")
    return version("waymo-open-dataset-tf-2-12-0"), "Frame proto round trip (no TensorFlow)"


def _check_native() -> tuple[str, str]:
    import torch

    from gpicture.ops import in_group_index_reference  # lazy: a check reports a broken import, never crashes
    from gpicture.ops.native import load_native  # lazy: a check reports a broken import, never crashes

    native = load_native()
    if native is None:
        raise RuntimeError("gpicture._native is not built (run `make setup`); pure-torch fallback in use")
    groups = torch.randint(0, 7, (100,), generator=torch.Generator().manual_seed(0))
    if not torch.equal(native.in_group_index(groups, -1), in_group_index_reference(groups)):
        raise RuntimeError("native in_group_index differs from its torch reference")
    return "cuda+cpu" if native.with_cuda else "cpu", "in_group_index equals its reference"


def _check_teacher() -> tuple[str, str]:
    import numpy as np

    from gpicture.params import ParamsError, load_section  # lazy: a check reports a broken import, never crashes
    from gpicture.teacher import SealTeacher  # lazy: a check reports a broken import, never crashes

    try:
        ckpt = load_section(Path("params.yaml"), "teacher").get("checkpoint")
    except ParamsError:
        ckpt = None
    fitted = Path("models/teacher/nuscenes/teacher.pt")  # what the pipeline's teacher stages read
    if ckpt is None and fitted.is_file():
        ckpt = fitted
    t = SealTeacher.from_checkpoint(ckpt)
    coords = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 1]], dtype=np.int32)
    out = t.encode(coords, np.ones((3, 1), np.float32))
    if out.shape != (3, 64) or not np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4):
        raise RuntimeError(f"teacher gave features of shape {out.shape}, not unit-norm")
    if ckpt is None:
        return "Res16UNet34C", ("no teacher fitted yet (`gpicture teacher-fit` / `dvc repro` trains the stand-in); "
                                "checked on a seeded random initialisation")
    return "Res16UNet34C", t.description


CHECKS: list[tuple[str, Callable[[], tuple[str, str]], bool]] = [
    ("python", _check_python, True),
    ("torch", _check_torch, True),
    ("spconv", _check_spconv, True),
    ("MinkowskiEngine", _check_minkowski, True),
    ("torch-scatter", _check_torch_scatter, True),
    ("zarr", _check_zarr, True),
    ("numcodecs", _check_numcodecs, True),
    ("dvc", _check_dvc, True),
    ("nuscenes-devkit", _check_nuscenes, True),
    ("waymo protos", _check_waymo, True),
    ("native ops (csrc)", _check_native, True),
    ("teacher", _check_teacher, True),
]


def run_checks() -> list[CheckResult]:
    """Run every dependency check; never raises, failures are in the results."""
    results = []
    for name, fn, required in CHECKS:
        t0 = time.perf_counter()
        try:
            version, detail = fn()
            ok = True
        except Exception as exc:  # noqa: BLE001  (a doctor reports every failure)
            version, detail, ok = "-", f"{type(exc).__name__}: {exc}", False
        results.append(CheckResult(name, version, ok, detail, required, time.perf_counter() - t0))
    return results


def nvcc_version() -> str | None:
    """The CUDA compiler's release line, if nvcc is on PATH (informational)."""
    if shutil.which("nvcc") is None:
        return None
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    return next((ln.strip() for ln in out.splitlines() if "release" in ln), out.strip() or None)
