"""A nuScenes detection submission that reproduces the ground truth: the tests score it
with the devkit's DetectionEval to check that written datasets evaluate as perfect."""

from __future__ import annotations

import numpy as np
from nuscenes.eval.detection.utils import category_to_detection_name


def ground_truth_submission(nusc, scene_names: set[str] | None = None) -> dict:
    """A detection submission (official result format) that reproduces the ground truth.

    Every sample of the selected scenes (all scenes when ``scene_names`` is None; names
    not in ``nusc`` are ignored) gets an entry, empty when it has no evaluable box, as
    the evaluation requires. Boxes whose category has no detection class, or with no
    lidar/radar point, are left out (the evaluation drops them from the ground truth).
    Velocities come from ``nusc.box_velocity``; where it is undefined (NaN, an instance
    seen once) 0.0 is written so the file stays strict JSON — the ground-truth velocity
    is NaN there, so the velocity error is ignored either way.
    """
    attribute_name = {a["token"]: a["name"] for a in nusc.attribute}
    results: dict[str, list[dict]] = {}
    for scene in nusc.scene:
        if scene_names is not None and scene["name"] not in scene_names:
            continue
        sample_token = scene["first_sample_token"]
        while sample_token:
            sample = nusc.get("sample", sample_token)
            boxes = []
            for ann_token in sample["anns"]:
                ann = nusc.get("sample_annotation", ann_token)
                det = category_to_detection_name(ann["category_name"])
                if det is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                    continue
                if len(ann["attribute_tokens"]) > 1:
                    raise ValueError(f"annotation {ann_token} has more than one attribute")
                attr = attribute_name[ann["attribute_tokens"][0]] if ann["attribute_tokens"] else ""
                vel = np.nan_to_num(np.asarray(nusc.box_velocity(ann_token), dtype=np.float64)[:2], nan=0.0)
                boxes.append({
                    "sample_token": sample_token,
                    "translation": [float(v) for v in ann["translation"]],
                    "size": [float(v) for v in ann["size"]],
                    "rotation": [float(v) for v in ann["rotation"]],
                    "velocity": [float(v) for v in vel],
                    "detection_name": det,
                    "detection_score": 1.0,
                    "attribute_name": attr,
                })
            results[sample_token] = boxes
            sample_token = sample["next"]
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}
