"""Realism figures of the synthetic data against the real datasets' (README tables).

Run after `make repro`: .venv/bin/python benchmarks/synth_realism.py [data/raw] [../shared/realdata]
Reads the generated data with the official devkit (nuScenes) and the project's
TensorFlow-free Waymo decoder, and prints markdown tables; with the real keyframes of
../shared/realdata beside it, the nuScenes intensity distributions side by side.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np


def nuscenes_figures(root: Path) -> dict:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes

    version = next(p.name for p in root.iterdir() if p.name.startswith("v1.0-"))
    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    pts = [np.fromfile(root / sd["filename"], dtype=np.float32).size // 5 for sd in nusc.sample_data]
    boxes = Counter(category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation)
    seg = np.zeros(32, np.int64)
    for rec in nusc.lidarseg:
        seg += np.bincount(np.fromfile(root / rec["filename"], dtype=np.uint8), minlength=32)
    names = {c["index"]: c["name"] for c in nusc.category}
    return {"points": np.mean(pts), "boxes_per_key": len(nusc.sample_annotation) / len(nusc.sample),
            "box_classes": boxes, "seg": {names[i]: seg[i] / seg.sum() for i in np.argsort(-seg)[:8]}}


def waymo_figures(root: Path) -> dict:
    from waymo_open_dataset import dataset_pb2

    from gpicture.data.waymo.frame import decode_laser_points
    from gpicture.data.waymo.tfrecord import iter_records

    first, top, second, labels = [], [], [], []
    for path in sorted(root.rglob("*.tfrecord")):
        for rec in iter_records(path):
            f = dataset_pb2.Frame.FromString(rec)
            n = [len(decode_laser_points(f, laser.name, 0)) for laser in f.lasers]
            first.append(sum(n))
            top.append(n[[laser.name for laser in f.lasers].index(1)])
            second.append(sum(len(decode_laser_points(f, laser.name, 1)) for laser in f.lasers))
            labels.append(len(f.laser_labels))
    return {"first": np.mean(first), "top": np.mean(top), "second": np.mean(second), "labels": np.mean(labels)}


def intensity_tables(synthetic: Path, real: Path) -> None:
    """Intensity of the synthetic nuScenes keyframes beside the real ones, overall and per class."""
    from nuscenes.nuscenes import NuScenes

    from gpicture.synth.realism import intensity_by_class

    def load(root: Path):
        version = next(p.name for p in root.iterdir() if p.name.startswith("v1.0-"))
        return intensity_by_class(NuScenes(version=version, dataroot=str(root), verbose=False))

    (s_all, s_cls), (r_all, r_cls) = load(synthetic), load(real)
    print("\n| nuScenes intensity (0..255) | p5 | p25 | median | p75 | p90 | p99 | mean |")
    print("|---|---|---|---|---|---|---|---|")
    for name, st in (("synthetic", s_all), ("real (11 keyframes)", r_all)):
        p = st.percentiles
        print(f"| {name} | {p[5]:.0f} | {p[25]:.0f} | {p[50]:.0f} | {p[75]:.0f} | {p[90]:.0f} | {p[99]:.0f} "
              f"| {st.mean:.1f} |")
    print("\n| lidarseg class | real points | real median / p90 | synthetic median / p90 |")
    print("|---|---|---|---|")
    for name, st in sorted(r_cls.items(), key=lambda kv: -kv[1].points):
        syn = s_cls.get(name)
        cell = f"{syn.median:.0f} / {syn.percentiles[90]:.0f}" if syn else "(none)"
        print(f"| {name} | {st.points:,} | {st.median:.0f} / {st.percentiles[90]:.0f} | {cell} |")


def main() -> None:
    raw = Path(sys.argv[1] if len(sys.argv) > 1 else "data/raw")
    real_root = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/realdata") / "nuscenes_real"
    n = nuscenes_figures(raw / "nuscenes")
    w = waymo_figures(raw / "waymo")
    print("| figure | synthetic | real dataset |")
    print("|---|---|---|")
    print(f"| nuScenes points per LIDAR_TOP sweep | {n['points']:,.0f} | about 34,000 |")
    print(f"| nuScenes annotations per keyframe | {n['boxes_per_key']:.1f} | about 29 (1.17 M / 40 k) |")
    print(f"| Waymo first-return points per frame (5 lidars) | {w['first']:,.0f} | about 177,000 |")
    print(f"| Waymo TOP first-return points per frame | {w['top']:,.0f} | about 150,000 |")
    print(f"| Waymo second-return points per frame | {w['second']:,.0f} | a few thousand to tens of thousands |")
    print(f"| Waymo laser labels per frame | {w['labels']:.1f} | about 50 |")
    total = sum(v for k, v in n["box_classes"].items() if k)
    real = {"car": 42, "pedestrian": 18, "barrier": 13, "traffic_cone": 8, "truck": 8, "trailer": 2,
            "bus": 1.4, "construction_vehicle": 1.2, "motorcycle": 1.1, "bicycle": 1.0}
    print("\n| nuScenes box class | synthetic share | real share (approx.) |")
    print("|---|---|---|")
    for k in real:
        print(f"| {k} | {100 * n['box_classes'].get(k, 0) / total:.1f} % | {real[k]} % |")
    print("\n| lidarseg class (top 8) | synthetic share of points |")
    print("|---|---|")
    for k, v in n["seg"].items():
        print(f"| {k} | {100 * v:.1f} % |")
    if real_root.is_dir():
        intensity_tables(raw / "nuscenes", real_root)


if __name__ == "__main__":
    main()
