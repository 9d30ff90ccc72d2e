"""The model and training path runs with PyTorch alone: a GPU host has its own CUDA PyTorch but
none of zarr, numcodecs, torch_scatter, spconv, MinkowskiEngine, scikit-learn, the nuScenes
devkit, dvc / dvclive or the Waymo protos. A subprocess makes those packages unimportable,
imports the model, batch, engine, pre-training and detection-task modules, and runs a student
forward + backward, a GPICTURE pre-training loss + backward and a CenterPoint detection loss +
backward on tiny synthetic frames (benchmarks/_synthetic.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("zarr", "numcodecs", "torch_scatter", "spconv", "MinkowskiEngine", "sklearn", "nuscenes", "dvc",
           "dvclive", "waymo_open_dataset")
PORTABLE = (
    "gpicture.models.vfe", "gpicture.models.dsvt", "gpicture.models.student", "gpicture.models.pretrain",
    "gpicture.models.i2mask", "gpicture.models.dgpl", "gpicture.models.cka", "gpicture.models.detection.model",
    "gpicture.models.detection.centerpoint", "gpicture.models.segmentation", "gpicture.models.occupancy",
    "gpicture.data.batch", "gpicture.training.engine", "gpicture.training.pretrain",
    "gpicture.training.pretrain_data", "gpicture.tasks.detection.task",
)

CHILD = r'''
import importlib, importlib.abc, json, math, sys
BLOCKED, PORTABLE, BENCH = set(sys.argv[1].split(",")), sys.argv[2].split(","), sys.argv[3]

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked by test_portable_imports)")
        return None

sys.meta_path.insert(0, Block())
for name in PORTABLE:
    importlib.import_module(name)
sys.path.insert(0, BENCH)

import torch
import _synthetic as syn
from gpicture.data.spec import dataset_spec
from gpicture.models.student import Student, StudentConfig
from gpicture.ops.scatter import torch_scatter_available
from gpicture.tasks.detection.task import DetectionHead, DetectionTask
from gpicture.training.pretrain import MaskConfig, build_pretrainer, masks_for_batch

torch.manual_seed(0)
grid, prof = syn.TINY_GRID, syn.TINY_MODEL
attrs, names = syn.grid_attrs(grid), prof["point_features"]
frames = [syn.lidar_frame(grid, sweeps=2, seed=s, index=s, max_points=3000) for s in (1, 2)]
out = {"points": sum(len(f.points) for f in frames), "voxels": sum(len(f.voxel_coords) for f in frames)}

student = Student(StudentConfig.from_params(prof, attrs))
b = syn.voxel_batch(frames, names)
enc = student.encode(b)
loss = student.bev(enc, b.batch_size).square().mean() + sum(a.square().mean() for a in enc.activations)
loss.backward()
out["student"] = float(loss.detach())
out["student_grad"] = sum(float(p.grad.abs().sum()) for p in student.vfe.parameters() if p.grad is not None)

alpha = (0.97, 0.88, 0.78, 0.64, 0.55, 0.44, 0.36, 0.31)
model = build_pretrainer(prof, attrs, alpha, pred_points=16, decoder_blocks=(1,))
pb = syn.pretrain_batch(frames, names, grid, true_points=16)
mask = masks_for_batch(pb, MaskConfig(), seed=0, epoch=0)
losses = model(pb, mask, beta=0.5)
losses.total.backward()
out.update(pretrain=float(losses.total.detach()), pretrain_points=float(losses.points.mean()),
           pretrain_teacher=float(losses.teacher.mean()), masked=float(mask.float().mean()),
           teacher_head_grad=float(model.teacher_heads[0].weight.grad.abs().sum()))

spec = dataset_spec("nuscenes")
task = DetectionTask()
det = task.build(spec, prof, attrs, DetectionHead(head_stride=2))
db = syn.detection_batch(frames, names, spec.detection_classes)
dloss, parts = task.loss(det, db)
dloss.backward()
out.update(detection=float(dloss.detach()), boxes=sum(len(x) for x in db.boxes),
           detection_head_grad=sum(float(p.grad.abs().sum()) for p in det.head.parameters() if p.grad is not None))

out["torch_scatter_available"] = torch_scatter_available()
out["imported_blocked"] = sorted({m.partition(".")[0] for m in sys.modules} & BLOCKED)
importable = []
for name in sorted(BLOCKED):  # the finder holds: not one of them can be imported now
    try:
        importlib.import_module(name)
        importable.append(name)
    except ImportError:
        pass
out["importable_blocked"] = importable
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def child() -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, ",".join(BLOCKED), ",".join(PORTABLE), str(ROOT / "benchmarks")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads(line[-1][len("RESULT "):])


def test_nothing_blocked_was_imported(child) -> None:
    assert child["imported_blocked"] == []
    assert child["importable_blocked"] == []
    assert child["torch_scatter_available"] is False  # the pure-torch scatter ops ran


def test_student_forward_backward(child) -> None:
    assert child["points"] > 1000 and child["voxels"] > 500
    assert child["student"] > 0 and child["student"] < float("inf")
    assert 0 < child["student_grad"] < float("inf")  # gradients reached the VFE through the scatter ops


def test_pretraining_loss_backward(child) -> None:
    for key in ("pretrain", "pretrain_points", "pretrain_teacher"):
        assert 0 < child[key] < float("inf"), (key, child[key])
    assert 0.1 < child["masked"] < 0.9  # I2Mask masked a part of the voxels, not none or all
    assert child["teacher_head_grad"] > 0  # beta > 0: the teacher loss trains its heads


def test_detection_loss_backward(child) -> None:
    assert child["boxes"] > 0
    assert 0 < child["detection"] < float("inf")
    assert 0 < child["detection_head_grad"] < float("inf")

