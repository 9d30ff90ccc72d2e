"""The teacher probe: cluster purity and linear-probe mIoU tell class-bearing features from noise."""

from __future__ import annotations

import numpy as np

from gpicture.training.teacher_probe import LabelledFeatures, cluster_purity, linear_probe, voxel_labels


def _features(rng, labels: np.ndarray, signal: float) -> np.ndarray:
    """Unit 64-d features: a fixed direction per class (weight ``signal``) plus noise."""
    dirs = rng.normal(size=(labels.max() + 1, 64))
    x = signal * dirs[labels] + rng.normal(size=(len(labels), 64))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _data(seed: int, signal: float, n: int = 3000, classes: int = 6) -> LabelledFeatures:
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, classes + 1, n)
    return LabelledFeatures(_features(np.random.default_rng(0), labels, signal), labels,
                            np.repeat(np.arange(3), n // 3), [f"c{i}" for i in range(classes + 1)])


def test_voxel_labels_take_the_majority_and_skip_unlabelled() -> None:
    pv = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    lab = np.array([2, 2, 3, 0, 0, 4, 1, 5])
    np.testing.assert_array_equal(voxel_labels(pv, lab, 5, 6), [2, 0, 4, 1, 0])  # tie 1/5: smallest


def test_class_bearing_features_score_high_and_noise_low() -> None:
    good, noise = _data(1, signal=4.0), _data(1, signal=0.0)
    assert cluster_purity(good, k=8) > 0.9
    assert cluster_purity(noise, k=8) < 0.35
    probe_good = linear_probe(_data(2, 4.0), good)
    probe_noise = linear_probe(_data(2, 0.0), noise)
    assert probe_good.miou > 0.9 and probe_noise.miou < 0.2
    assert set(probe_good.per_class) == {f"c{i}" for i in range(1, 7)}


def test_masking_ratios_per_class_follow_the_clusters() -> None:
    from gpicture.training.teacher_probe import masking_ratios

    good = _data(3, signal=6.0, classes=6)
    ratios = masking_ratios(good, k=8, n_partition=[3, 3, 2], lambda_threshold=0.6, base_ratio=[0.9, 0.45, 0.0])
    assert set(ratios) == {f"c{i}" for i in range(1, 7)}
    values = np.array(list(ratios.values()))
    assert ((values >= 0) & (values <= 0.91)).all()  # at most the largest base ratio (0.9), up to rounding
    # separable classes fall in different I2Mask groups: some classes are masked far more than others
    assert values.max() - values.min() > 0.3
