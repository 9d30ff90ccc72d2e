"""I²Mask: k-means, greedy inter-class partition, intra-class ratios and the masking itself."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gpicture.models.i2mask import _lloyd, i2mask, i2mask_batch, kmeans

ANGLES = (0, 10, 100, 130, 200, 215, 290, 300)  # degrees: centre directions in the (0, 1) plane
RADII = ((0.2, 0.4), (0.3, 0.8), (0.5, 1.2), (0.1, 0.7, 0.9), (0.4,), (1.0, 1.5), (0.8,), (0.2, 0.65))
SIZES = (40, 37, 52, 61, 25, 44, 33, 48)  # pairs of voxels per cluster


def planted(dim: int = 8, scale: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster k: pairs c_k ± r e_j (j >= 2, r cycling through RADII[k]) so that the mean
    is exactly c_k = scale (cos θ_k, sin θ_k, 0, ...) and each member lies at distance r."""
    feats, labels = [], []
    for k, (deg, radii, pairs) in enumerate(zip(ANGLES, RADII, SIZES, strict=True)):
        c = np.zeros(dim)
        c[0], c[1] = scale * math.cos(math.radians(deg)), scale * math.sin(math.radians(deg))
        for p in range(pairs):
            r = radii[p % len(radii)]
            e = np.zeros(dim)
            e[2 + p % (dim - 2)] = r
            feats += [c + e, c - e]
            labels += [k, k]
    perm = np.random.default_rng(0).permutation(len(labels))
    return torch.tensor(np.array(feats)[perm], dtype=torch.float32), torch.tensor(np.array(labels)[perm])


def reference(features: np.ndarray, labels: np.ndarray, k: int, sizes, lam: float, base):
    """The I²Mask formulas, written out with loops in float64."""
    centres = np.stack([features[labels == j].mean(0) if (labels == j).any() else np.zeros(features.shape[1])
                        for j in range(k)])
    unit = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-300)
    cosdist = 1 - unit @ unit.T
    remaining, partition = list(range(k)), []
    for s in sizes:
        best, best_score = None, -np.inf
        for comb in itertools.combinations(remaining, s):
            pairs = list(itertools.combinations(comb, 2))
            score = np.mean([cosdist[i, j] for i, j in pairs]) if pairs else 0.0
            if score > best_score:
                best, best_score = comb, score
        partition.append(list(best))
        remaining = [r for r in remaining if r not in best]
    d_mean = np.zeros(k)
    for j in range(k):
        dist = np.linalg.norm(features[labels == j] - centres[j], axis=1)
        d_mean[j] = dist[dist > lam].mean() if (dist > lam).any() else 0.0
    r_c = 1 - d_mean / d_mean.max() if d_mean.max() > 0 else np.ones(k)
    b = np.zeros(k)
    for group, ratio in zip(partition, base, strict=True):
        b[group] = ratio
    return partition, d_mean, r_c, b * r_c


def test_planted_clusters_match_the_formulas() -> None:
    x, labels = planted()
    res = i2mask(x, labels=labels, generator=torch.Generator().manual_seed(0))
    # By hand: the most spread triple of directions is (0°, 100°, 215°), then (10°, 130°, 290°).
    assert res.partition == [[0, 2, 5], [1, 3, 6], [4, 7]]
    # D_k = mean of the radii beyond 0.6, over the members (radii cycle through RADII[k]).
    expect_d = []
    for radii, pairs in zip(RADII, SIZES, strict=True):
        r = [radii[p % len(radii)] for p in range(pairs)]
        far = [v for v in r if v > 0.6]
        expect_d.append(np.mean(far) if far else 0.0)
    np.testing.assert_allclose(res.distance_mean.numpy(), expect_d, atol=1e-5)
    partition, d_mean, r_c, ratio = reference(x.double().numpy(), labels.numpy(), 8, (3, 3, 2), 0.6,
                                              (0.9, 0.45, 0.0))
    assert res.partition == partition
    np.testing.assert_allclose(res.distance_mean.numpy(), d_mean, atol=1e-5)
    np.testing.assert_allclose(res.r_c.numpy(), r_c, atol=1e-5)
    np.testing.assert_allclose(res.cluster_ratio.numpy(), ratio, atol=1e-5)
    assert res.r_c[5] == 0 and res.r_c[4] == 1  # the farthest-spread cluster, a cluster all within lambda
    assert torch.equal(res.cluster, labels)
    for k in range(8):
        members = labels == k
        n_k = int(members.sum())
        assert int((res.mask & members).sum()) == round(float(res.cluster_ratio[k]) * n_k)
    assert int(res.mask.sum()) == sum(round(float(res.cluster_ratio[k]) * int((labels == k).sum()))
                                      for k in range(8))


def test_ties_take_the_lexicographically_smallest_subset() -> None:
    # Orthogonal centres: every pairwise cosine distance is exactly 1.
    eye = torch.eye(8)
    x = torch.stack([3 * eye[k] + s * 0.1 * eye[(k + 1) % 8] for k in range(8) for s in (1, -1)])
    labels = torch.arange(8).repeat_interleave(2)
    res = i2mask(x, labels=labels)
    assert res.partition == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert i2mask(x, labels=labels, n_partition=(1, 4, 3), base_mask_ratio=(1, 0.5, 0)).partition == \
        [[0], [1, 2, 3, 4], [5, 6, 7]]


def test_empty_clusters_take_part() -> None:
    x, labels = planted()
    labels = torch.where(labels == 3, 2, labels)  # cluster 3 empty: zero centre, cosine distance 1 to all
    res = i2mask(x, labels=labels, generator=torch.Generator().manual_seed(1))
    partition, _, _, ratio = reference(x.double().numpy(), labels.numpy(), 8, (3, 3, 2), 0.6, (0.9, 0.45, 0.0))
    assert res.partition == partition
    np.testing.assert_allclose(res.cluster_ratio.numpy(), ratio, atol=1e-5)


def test_all_within_lambda_masks_at_the_base_ratio() -> None:
    x, labels = planted()
    res = i2mask(x, labels=labels, lambda_threshold=10.0)
    assert torch.equal(res.r_c, torch.ones(8)) and torch.equal(res.distance_mean, torch.zeros(8))
    for group, base in zip(res.partition, (0.9, 0.45, 0.0), strict=True):
        for k in group:
            n_k = int((labels == k).sum())
            assert int((res.mask & (labels == k)).sum()) == round(base * n_k)


def test_mask_is_uniform_within_a_cluster() -> None:
    x = torch.zeros(400, 4)
    labels = torch.zeros(400, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(400)
    for _ in range(200):
        hits += i2mask(x, labels=labels, n_clusters=1, n_partition=(1,), base_mask_ratio=(0.5,),
                       generator=gen).mask.float()
    assert hits.sum() == 200 * 200  # exactly half each time
    assert 4 < hits.std() < 10  # each voxel ~ Binomial(200, 0.5): std ~7


def test_deterministic_with_a_generator() -> None:
    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(3))
    a = i2mask(x, generator=torch.Generator().manual_seed(7))
    b = i2mask(x, generator=torch.Generator().manual_seed(7))
    c = i2mask(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.cluster, b.cluster) and a.partition == b.partition
    assert torch.equal(a.cluster_ratio, b.cluster_ratio)
    assert not torch.equal(a.mask, c.mask)


@pytest.mark.parametrize("n_init,sample_size", [(8, 2048), (1, None)])
def test_kmeans_recovers_planted_clusters(n_init: int, sample_size: int | None) -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 32, generator=gen) * 4
    truth = torch.randint(0, 8, (5000,), generator=gen)
    x = centres[truth] + 0.3 * torch.randn(5000, 32, generator=gen)
    labels, found = kmeans(x, 8, generator=torch.Generator().manual_seed(1), n_init=n_init, sample_size=sample_size)
    # a bijection between planted and found clusters
    pairs = set(zip(truth.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 8 and len({p[1] for p in pairs}) == 8
    for t, f in pairs:
        assert torch.allclose(found[f], x[truth == t].mean(0), atol=1e-4)
    again = kmeans(x, 8, generator=torch.Generator().manual_seed(1), n_init=n_init, sample_size=sample_size)
    assert torch.equal(labels, again[0]) and torch.equal(found, again[1])


def test_empty_cluster_is_reseeded_at_the_farthest_point() -> None:
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 0.0], [10.1, 0.0], [30.0, 0.0]])
    # centre 2 is far from everything: empty after the first assignment
    start = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [500.0, 500.0]]])
    labels, centres, _ = _lloyd(x, start, max_iter=50)
    # the farthest point from its centre (30, 0) takes the empty cluster
    assert labels[0].tolist() == [0, 0, 0, 1, 1, 2]
    torch.testing.assert_close(centres[0, 2], torch.tensor([30.0, 0.0]))


def test_kmeans_handles_duplicates_and_empty_clusters() -> None:
    x = torch.tensor([[0.0, 0.0]] * 10 + [[1.0, 1.0]] * 10 + [[5.0, 5.0]])  # 3 distinct points, k = 4
    labels, centres = kmeans(x, 4, generator=torch.Generator().manual_seed(0))
    assert labels.shape == (21,) and centres.shape == (4, 2)
    assert len(set(labels.tolist())) == 3
    with pytest.raises(ValueError, match="at least k points"):
        kmeans(x[:3], 4)


def test_small_and_empty_frames() -> None:
    res = i2mask(torch.zeros(0, 8))
    assert res.mask.shape == (0,) and res.cluster_ratio.shape == (8,)
    res = i2mask(torch.randn(5, 8))  # fewer voxels than clusters: one voxel per cluster
    assert torch.equal(res.cluster, torch.arange(5))


def test_settings_are_checked() -> None:
    x = torch.randn(100, 4)
    with pytest.raises(ValueError, match="sum to n_clusters"):
        i2mask(x, n_clusters=8, n_partition=(3, 3, 3))
    with pytest.raises(ValueError, match="same length"):
        i2mask(x, n_partition=(4, 4))
    with pytest.raises(ValueError, match="labels"):
        i2mask(x, labels=torch.full((100,), 8))


def test_batch_with_invalid_voxels() -> None:
    gen = torch.Generator().manual_seed(0)
    n = (900, 700, 300)
    x = torch.randn(sum(n), 16, generator=gen)
    batch = torch.cat([torch.full((m,), b) for b, m in enumerate(n)])
    perm = torch.randperm(sum(n), generator=gen)  # voxels of frames interleaved
    x, batch = x[perm], batch[perm]
    valid = torch.rand(sum(n), generator=gen) > 0.4
    valid[batch == 2] = False  # a frame without any teacher target
    mask, cluster = i2mask_batch(x, batch, valid, generator=torch.Generator().manual_seed(5))
    assert (cluster[~valid] == -1).all() and ((cluster[valid] >= 0) & (cluster[valid] < 8)).all()
    for b in (0, 1):
        fv, fi = (batch == b) & valid, (batch == b) & ~valid
        frac = mask[fv].sum().item() / fv.sum().item()
        assert 0 < frac < 1
        assert mask[fi].sum().item() == round(mask[fv].sum().item() * fi.sum().item() / fv.sum().item())
        # the valid part is I²Mask of that frame: per cluster, the masked counts follow its ratios
        assert len(set(cluster[fv].tolist())) == 8
    weighted = (3 * 0.9 + 3 * 0.45 + 2 * 0.0) / 8
    assert mask[batch == 2].sum().item() == round(weighted * 300)
    again = i2mask_batch(x, batch, valid, generator=torch.Generator().manual_seed(5))
    assert torch.equal(mask, again.mask) and torch.equal(cluster, again.cluster)
    all_valid = i2mask_batch(x, batch, generator=torch.Generator().manual_seed(5))
    assert (all_valid.cluster >= 0).all()
