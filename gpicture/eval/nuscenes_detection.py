"""nuScenes 3D detection scored by the devkit's ``DetectionEval``.

:func:`evaluate_submission` runs ``nuscenes.eval.detection.evaluate.DetectionEval`` with the
``detection_cvpr_2019`` configuration on an official submission file
(:mod:`gpicture.eval.nuscenes_submission`), after checking the file itself so that a bad
submission gives a ValueError naming the file instead of a bare devkit assertion, and
whatever the devkit still raises becomes a ValueError naming the file too.

A submission without a single box is legal in the format (every sample an empty list) but
the devkit's loader cannot read one (it infers the box type from the first box); it is
scored by the devkit's own ``DetectionEval.evaluate`` on no boxes (mAP 0, NDS 0, every TP
error 1), with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gpicture.atomic import write_file_atomic
from gpicture.data.nuscenes_reader import open_nuscenes
from gpicture.eval.nuscenes_scenes import sample_tokens, split_scenes
from gpicture.eval.nuscenes_submission import check_submission

log = logging.getLogger(__name__)


def _write_json(path: Path, obj: Any) -> None:
    write_file_atomic(path, json.dumps(obj, indent=2))


def _no_boxes_eval(cfg: Any, meta: dict) -> Any:
    """The devkit's ``DetectionEval`` with no box on either side, for ``evaluate()`` alone: with
    no prediction every class accumulates the devkit's ``no_predictions`` data whatever the
    ground truth, so its metrics are those of an empty submission."""
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.evaluate import DetectionEval

    ev = DetectionEval.__new__(DetectionEval)  # its __init__ loads the submission, which fails on no box
    ev.cfg, ev.meta, ev.verbose = cfg, dict(meta), False
    ev.gt_boxes, ev.pred_boxes = EvalBoxes(), EvalBoxes()
    return ev


def evaluate_submission(nusc_root: Path, version: str, eval_set: str, submission: Path, out_dir: Path, *,
                        nusc=None) -> dict:
    """Score ``submission`` with the devkit's DetectionEval (``detection_cvpr_2019``).

    Writes the devkit's ``metrics_summary.json`` and ``metrics_details.json`` in ``out_dir``
    and returns ``{"mAP", "NDS", "per_class_AP", "tp_errors", "per_class_tp_errors", "scenes",
    "scenes_missing"}`` (TP errors are NaN for a class without ground truth; ``scenes``: the
    split's scenes the dataset holds, which are those evaluated, as the devkit's ``load_gt``
    keeps them; ``scenes_missing``: how many of the split it lacks). ``nusc`` reuses an already
    loaded ``NuScenes`` of ``nusc_root`` / ``version``. ValueError naming the file for a
    submission that is not valid JSON, lacks ``results``, or whose samples are not
    exactly those of ``eval_set``; a submission without any box scores 0 with a warning
    (module docstring); any other devkit failure is a ValueError naming the file.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    submission, out_dir = Path(submission), Path(out_dir)
    if nusc is None:
        nusc = open_nuscenes(Path(nusc_root), version)
    cfg = config_factory("detection_cvpr_2019")
    scenes = split_scenes(nusc, eval_set)
    data = check_submission(submission, set(sample_tokens(nusc, scenes)), cfg.max_boxes_per_sample)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if not any(data["results"].values()):
            log.warning("%s: a submission without a single box: it scores mAP 0 and NDS 0", submission)
            ev = _no_boxes_eval(cfg, data["meta"])
        else:
            ev = DetectionEval(nusc, cfg, str(submission), eval_set, str(out_dir), verbose=False)
        metrics, details = ev.evaluate()  # DetectionEval.main without its printing and plots
    except AssertionError as e:  # anything the checks above did not foresee
        raise ValueError(f"{submission}: refused by the nuScenes devkit: {e}") from None
    except Exception as e:  # noqa: BLE001  (the devkit's KeyErrors, IndexErrors, ...: a message, not a traceback)
        raise ValueError(f"{submission}: the nuScenes devkit's DetectionEval failed on it "
                         f"({type(e).__name__}: {e})") from None
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
        "scenes": list(scenes.present),
        "scenes_missing": scenes.missing,
    }
