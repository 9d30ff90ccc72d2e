"""nuScenes 3D detection scored by the devkit's ``DetectionEval``.

:func:`evaluate_submission` runs ``nuscenes.eval.detection.evaluate.DetectionEval`` with the
``detection_cvpr_2019`` configuration on an official submission file
(:mod:`gpicture.eval.nuscenes_submission`), after checking the file itself so that a bad
submission gives a ValueError naming the file instead of a bare devkit assertion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpicture.atomic import write_file_atomic
from gpicture.eval.nuscenes_submission import check_submission


def _eval_set_tokens(nusc, eval_set: str) -> set[str]:
    from nuscenes.utils.splits import create_splits_scenes, is_predefined_split

    if is_predefined_split(split_name=eval_set):
        version = nusc.version
        want = ("trainval" if eval_set in {"train", "val", "train_detect", "train_track"}
                else "mini" if eval_set in {"mini_train", "mini_val"} else "test" if eval_set == "test" else None)
        if want is None:
            raise ValueError(f"eval set {eval_set!r} is not a detection evaluation split")
        if not version.endswith(want):
            raise ValueError(f"eval set {eval_set!r} does not belong to nuScenes version {version!r}")
        scenes = set(create_splits_scenes()[eval_set])
    else:
        from nuscenes.utils.splits import get_scenes_of_custom_split

        try:
            scenes = set(get_scenes_of_custom_split(split_name=eval_set, nusc=nusc))
        except (FileNotFoundError, AssertionError, ValueError) as e:
            raise ValueError(f"unknown eval set {eval_set!r}: {e}") from None
    scene_names = {s["token"]: s["name"] for s in nusc.scene}
    return {s["token"] for s in nusc.sample if scene_names[s["scene_token"]] in scenes}


def _write_json(path: Path, obj: Any) -> None:
    write_file_atomic(path, json.dumps(obj, indent=2))


def evaluate_submission(nusc_root: Path, version: str, eval_set: str, submission: Path, out_dir: Path, *,
                        nusc=None) -> dict:
    """Score ``submission`` with the devkit's DetectionEval (``detection_cvpr_2019``).

    Writes the devkit's ``metrics_summary.json`` and ``metrics_details.json`` in ``out_dir``
    and returns ``{"mAP", "NDS", "per_class_AP", "tp_errors", "per_class_tp_errors"}``
    (TP errors are NaN for a class without ground truth). ``nusc`` reuses an already
    loaded ``NuScenes`` of ``nusc_root`` / ``version``. ValueError naming the file for a
    submission that is not valid JSON, lacks ``results``, or whose samples are not
    exactly those of ``eval_set``.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    from nuscenes.nuscenes import NuScenes

    submission, out_dir = Path(submission), Path(out_dir)
    if nusc is None:
        nusc = NuScenes(version=version, dataroot=str(nusc_root), verbose=False)
    cfg = config_factory("detection_cvpr_2019")
    check_submission(submission, _eval_set_tokens(nusc, eval_set), cfg.max_boxes_per_sample)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        ev = DetectionEval(nusc, cfg, str(submission), eval_set, str(out_dir), verbose=False)
    except AssertionError as e:  # anything the checks above did not foresee
        raise ValueError(f"{submission}: refused by the nuScenes devkit: {e}") from None
    metrics, details = ev.evaluate()  # DetectionEval.main without its printing and plots
    summary = metrics.serialize()
    summary["meta"] = ev.meta.copy()
    _write_json(out_dir / "metrics_summary.json", summary)
    _write_json(out_dir / "metrics_details.json", details.serialize())
    return {
        "mAP": float(summary["mean_ap"]),
        "NDS": float(summary["nd_score"]),
        "per_class_AP": {k: float(v) for k, v in summary["mean_dist_aps"].items()},
        "tp_errors": {k: float(v) for k, v in summary["tp_errors"].items()},
        "per_class_tp_errors": {c: {k: float(v) for k, v in errs.items()}
                                for c, errs in summary["label_tp_errors"].items()},
    }
