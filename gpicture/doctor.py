"""Live checks of everything the pipeline depends on (``gpicture doctor``).

Each check imports a dependency, reports its version and performs a real, tiny
operation with it, so a broken build (an ABI mismatch, a missing BLAS, a CPU-only
spconv asked for CUDA streams) shows here rather than an hour into a run.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import CodeType

from gpicture.atomic import write_file_atomic
from gpicture.provenance import KEY_PACKAGES, REPO, drift, installed_versions, lock_file, locked_versions, normalize


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one dependency check."""

    name: str
    version: str  # "-" when the package could not be imported
    ok: bool
    detail: str  # what the live check did, or why it failed
    required: bool
    seconds: float
    cached: bool = False  # reported from an earlier pass in the same environment (run_checks)


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


# (name, check, required, cacheable): a cacheable check depends only on the installed packages,
# so its pass is kept until the environment changes (environment_fingerprint); python, torch (the
# device can change) and the teacher (its checkpoint can change) always run live.
CHECKS: list[tuple[str, Callable[[], tuple[str, str]], bool, bool]] = [
    ("python", _check_python, True, False),
    ("torch", _check_torch, True, False),
    ("spconv", _check_spconv, True, True),
    ("MinkowskiEngine", _check_minkowski, True, True),
    ("torch-scatter", _check_torch_scatter, True, True),
    ("zarr", _check_zarr, True, True),
    ("numcodecs", _check_numcodecs, True, True),
    ("dvc", _check_dvc, True, True),
    ("nuscenes-devkit", _check_nuscenes, True, True),
    ("waymo protos", _check_waymo, True, True),
    ("native ops (csrc)", _check_native, True, True),
    ("teacher", _check_teacher, True, False),
]
CACHE = Path(sys.prefix) / ".gpicture-doctor.json"  # in the environment it describes (.venv/)


def environment_fingerprint() -> str:
    """A digest of what the cacheable checks depend on: every installed distribution (name,
    version, and the time its metadata was written, so a reinstall of the same version counts),
    the native extension's file, and the Python build. ~0.1 s, nothing imported."""
    h = hashlib.sha256(sys.version.encode())
    rows = []
    # the environment's own site-packages only: sys.path[0] (the cwd or the script's folder) differs per launch
    site = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    for dist in metadata.distributions(path=site):
        where = getattr(dist, "_path", None)  # the .dist-info folder (PathDistribution)
        try:
            stamp = Path(where).stat().st_mtime_ns if where is not None else 0
        except OSError:
            stamp = 0
        rows.append(f"{dist.metadata.get('Name')}=={dist.version}@{stamp}")
    for so in sorted((Path(__file__).resolve().parent).glob("_native*.so")):
        rows.append(f"{so.name}@{so.stat().st_mtime_ns}:{so.stat().st_size}")
    h.update("\n".join(sorted(rows)).encode())
    return h.hexdigest()


def _cached(fingerprint: str) -> dict[str, dict]:
    try:
        data = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("checks", {}) if data.get("fingerprint") == fingerprint else {}


def _code(fn: Callable) -> str:
    """A digest of a check's code: a cached pass holds only for the check that passed."""
    h = hashlib.sha256()

    def add(code: CodeType) -> None:  # nested code objects (comprehensions) by content, not address
        h.update(code.co_code)
        for c in code.co_consts:
            add(c) if isinstance(c, CodeType) else h.update(repr(c).encode())

    add(fn.__code__)
    return h.hexdigest()[:16]


def _save_cache(fingerprint: str, results: list[CheckResult], cacheable: dict[str, Callable]) -> None:
    keep = {r.name: {"version": r.version, "detail": r.detail, "when": time.strftime("%Y-%m-%d %H:%M"),
                     "code": _code(cacheable[r.name])}
            for r in results if r.ok and r.name in cacheable and not r.cached}
    old = _cached(fingerprint)
    try:
        write_file_atomic(CACHE, json.dumps({"fingerprint": fingerprint, "checks": {**old, **keep}}, indent=1))
    except OSError:
        pass  # a read-only environment: every run checks live


def run_checks(full: bool = False) -> list[CheckResult]:
    """Run every dependency check; never raises, failures are in the results. Without ``full``,
    a cacheable check that passed in this same environment (unchanged fingerprint) is reported
    from that run instead of importing its package again (spconv's import alone takes seconds)."""
    fingerprint = environment_fingerprint()
    cached = {} if full else _cached(fingerprint)
    results = []
    for name, fn, required, cacheable in CHECKS:
        t0 = time.perf_counter()
        if cacheable and name in cached and cached[name].get("code") == _code(fn):
            c = cached[name]
            results.append(CheckResult(name, c["version"], True, f"{c['detail']}; passed {c['when']}, environment "
                                       "unchanged since (--full reruns it)", required, 0.0, cached=True))
            continue
        try:
            version, detail = fn()
            ok = True
        except Exception as exc:  # noqa: BLE001  (a doctor reports every failure)
            version, detail, ok = "-", f"{type(exc).__name__}: {exc}", False
        results.append(CheckResult(name, version, ok, detail, required, time.perf_counter() - t0))
    _save_cache(fingerprint, results, {name: fn for name, fn, _, cacheable in CHECKS if cacheable})
    return results


@dataclass(frozen=True)
class LockReport:
    """The committed lock against the installed packages."""

    lock: Path | None
    locked: int  # packages the lock pins
    drift: dict[str, tuple[str, str | None]]  # name -> (locked, installed or None)
    key: list[tuple[str, str | None, str | None]]  # (name, locked, installed) of provenance.KEY_PACKAGES


def lock_report(repo: Path = REPO) -> LockReport:
    """Compare the lock of ``repo`` (requirements.lock / uv.lock) with what is installed."""
    path = lock_file(repo)
    installed = installed_versions()
    locked = locked_versions(path) if path is not None else {}
    key = [(n, locked.get(normalize(n)), installed.get(normalize(n))) for n in KEY_PACKAGES]
    return LockReport(path, len(locked), drift(locked, installed), key)


def nvcc_version() -> str | None:
    """The CUDA compiler's release line, if nvcc is on PATH (informational)."""
    if shutil.which("nvcc") is None:
        return None
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    return next((ln.strip() for ln in out.splitlines() if "release" in ln), out.strip() or None)
