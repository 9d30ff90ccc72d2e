"""`gpicture synth waymo`: records parse as Frames and decode to exactly the simulated returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from waymo_open_dataset import dataset_pb2, label_pb2
from waymo_segmentation import decode_segmentation

from gpicture.data.waymo.frame import decode_laser_points
from gpicture.data.waymo.tfrecord import iter_records
from gpicture.synth.generate import SynthConfig, generate_waymo
from gpicture.synth.simulate import simulate_waymo_frame
from gpicture.synth.waymo_writer import write_segment
from gpicture.synth.world import make_scene


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[list, Path]:
    scene = make_scene(11, 1.0)
    rng = np.random.default_rng(0)
    frames = [simulate_waymo_frame(scene, "1234567890_1000_000_1020_000", 0.05 + 0.1 * k, 10_000 + k, k == 0, rng)
              for k in range(2)]
    path = tmp_path_factory.mktemp("waymo") / "segment-test.tfrecord"
    write_segment(frames, path, zlib_level=1)
    return frames, path


def test_every_record_parses_as_a_frame(simulated) -> None:
    frames, path = simulated
    parsed = [dataset_pb2.Frame.FromString(r) for r in iter_records(path)]
    assert len(parsed) == 2
    f = parsed[0]
    assert {laser.name for laser in f.lasers} == {1, 2, 3, 4, 5}
    top_cal = next(c for c in f.context.laser_calibrations if c.name == dataset_pb2.LaserName.TOP)
    assert len(top_cal.beam_inclinations) == 64
    assert np.rad2deg(min(top_cal.beam_inclinations)) == pytest.approx(-17.6, abs=0.01)
    assert np.rad2deg(max(top_cal.beam_inclinations)) == pytest.approx(2.4, abs=0.01)


def test_decoding_gives_exactly_the_simulated_returns(simulated) -> None:
    frames, path = simulated
    for sim, rec in zip(frames, iter_records(path), strict=True):
        proto = dataset_pb2.Frame.FromString(rec)
        total = 0
        for laser in sim.lasers:
            for ri in (0, 1):
                got = decode_laser_points(proto, laser.name, ri)
                want = laser.points[ri]
                assert got.shape == want.shape, (laser.name, ri)
                np.testing.assert_allclose(got, want, atol=1e-4)
                total += len(got)
        assert 150_000 < total < 400_000  # real Waymo: about 180k first-return points per frame
    top = frames[0].lasers[0]
    assert len(top.points[1]) > 500  # vegetation gives second returns


def test_labels_count_the_decoded_points_inside(simulated) -> None:
    frames, path = simulated
    proto = dataset_pb2.Frame.FromString(next(iter(iter_records(path))))
    pts = np.concatenate([decode_laser_points(proto, n, 0) for n in range(1, 6)])
    assert len(proto.laser_labels) >= 10
    types = {lab.type for lab in proto.laser_labels}
    assert {label_pb2.Label.TYPE_VEHICLE, label_pb2.Label.TYPE_PEDESTRIAN, label_pb2.Label.TYPE_CYCLIST} <= types
    for lab in proto.laser_labels:
        b = lab.box
        rel = pts - [b.center_x, b.center_y, b.center_z]
        c, s = np.cos(b.heading), np.sin(b.heading)
        lx, ly = rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c
        inside = (np.abs(lx) <= b.length / 2) & (np.abs(ly) <= b.width / 2) & (np.abs(rel[:, 2]) <= b.height / 2)
        # float32 rounding of the stored points can move a boundary point by a few micrometres
        assert abs(int(inside.sum()) - lab.num_lidar_points_in_box) <= 1, lab.id
        assert lab.detection_difficulty_level == (2 if lab.num_lidar_points_in_box <= 5 else 1)


def test_segmentation_labels_on_labelled_frames(simulated) -> None:
    frames, path = simulated
    protos = [dataset_pb2.Frame.FromString(r) for r in iter_records(path)]
    seg = decode_segmentation(protos[0], dataset_pb2.LaserName.TOP, 0)
    assert seg.shape == (64, 2650, 2)
    rng_img = frames[0].lasers[0].returns[0].range_image[..., 0]
    assert ((seg[..., 1] > 0) == (rng_img > 0)).all()  # every return is labelled
    assert len(np.unique(seg[..., 1])) >= 10
    assert not protos[1].lasers[0].ri_return1.segmentation_label_compressed  # 2 Hz labels


def test_generate_waymo_writes_training_and_validation(tmp_path) -> None:
    summary = generate_waymo(SynthConfig(scenes=2, frames=1, seed=1), tmp_path / "waymo")
    assert summary == {"segments": 2, "train": 1, "val": 1, "frames": 2}
    for split in ("training", "validation"):
        files = list((tmp_path / "waymo" / split).glob("segment-*_with_camera_labels.tfrecord"))
        assert len(files) == 1
        assert len(list(iter_records(files[0]))) == 1
