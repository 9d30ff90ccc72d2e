"""I²Mask: GPICTURE's inter- and intra-class masking of one frame's voxels.

Per frame, the voxels' high-level (teacher) features are clustered with k-means
(K = 8; :func:`kmeans`: the best of several greedy k-means++ restarts on a subsample,
then Lloyd iterations on all voxels until the assignments stop changing). Inter-class: the K clusters are split greedily into groups of sizes
``n_partition``; each time, among the remaining clusters, the subset whose centres
have the largest mean pairwise cosine distance forms the next group. Group g's
clusters get the base ratio ``base_mask_ratio[g]``. Intra-class: ``D_k`` is the mean
Euclidean distance to the centre of cluster k over its members farther than
``lambda_threshold`` (0 if none), ``r_c,k = 1 - D_k / max_j D_j``. Cluster k then
masks ``round(base(k) * r_c,k * n_k)`` of its ``n_k`` voxels, chosen uniformly at random.

Everything runs on the features' device, vectorized over the N x K distances; random
draws come from the given ``torch.Generator`` (on its own device), so a result is
reproducible for a given generator state. On CUDA, per-cluster sums go through
membership-matrix products rather than atomic scatters so that results repeat there too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

INIT_ITER = 10  # Lloyd updates of the k-means restarts on a subsample


@dataclass
class I2MaskResult:
    """I²Mask of one frame (N voxels, K clusters)."""

    mask: Tensor  # (N,) bool, True = masked
    cluster: Tensor  # (N,) long, cluster id in [0, K)
    cluster_ratio: Tensor  # (K,) float32, base(k) * r_c,k: the fraction of cluster k that is masked
    partition: list[list[int]]  # cluster ids of each group, in the order of n_partition
    r_c: Tensor  # (K,) float32, 1 - D_k / max_j D_j
    distance_mean: Tensor  # (K,) float32, D_k


class I2MaskBatchResult(NamedTuple):
    """I²Mask of a batch of frames (N voxels in all)."""

    mask: Tensor  # (N,) bool
    cluster: Tensor  # (N,) long, per-frame cluster id, -1 for voxels without a teacher target


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """n uniform [0, 1) float64 draws on ``device``, taken from ``generator`` on its own
    device (so a CPU generator can drive CUDA features)."""
    if generator is None:
        return torch.rand(n, dtype=torch.float64, device=device)
    return torch.rand(n, dtype=torch.float64, generator=generator, device=generator.device).to(device)


def _assign(x: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centre of each point for R sets of K centres ``centres`` (R, K, D):
    (labels (R, N), score (R, N)) with score = ||c||²/2 - x·c, so that the squared
    distance is ||x||² + 2 score. One (N, R·K) matmul."""
    r, k, d = centres.shape
    flat = centres.reshape(r * k, d)
    score = torch.addmm((flat * flat).sum(1)[None, :], x, flat.T, beta=0.5, alpha=-1.0)  # (N, R·K)
    best, labels = score.view(-1, r, k).min(2)
    return labels.T.contiguous(), best.T.contiguous()


def _cluster_sums(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums of the rows of ``x`` (R, K, D) and member counts (R, K) for R
    assignments ``labels`` (R, N) in [0, K).

    One membership-matrix product (repeatable on CUDA, unlike atomic scatters); a single
    assignment on the CPU uses index_add_, deterministic there and faster."""
    r, n = labels.shape
    group = labels + torch.arange(r, device=x.device)[:, None] * k  # (R, N) in [0, R·K)
    counts = torch.bincount(group.flatten(), minlength=r * k).view(r, k)
    if r == 1 and not x.is_cuda:
        sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels[0], x)
    else:
        member = torch.zeros(n, r * k, dtype=x.dtype, device=x.device).scatter_(1, group.T, 1.0)
        sums = member.T @ x
    return sums.view(r, k, -1), counts


def _sq_dist_to(x: Tensor, x_sq: Tensor, points: Tensor) -> Tensor:
    """(M, N) float64 squared distances of ``points`` (M, D) to every row of ``x`` (one matmul)."""
    d = torch.addmm(x_sq[None, :], points, x.T, alpha=-2.0) + (points * points).sum(1)[:, None]
    return d.clamp_min_(0.0).double()


def _kmeans_pp(x: Tensor, k: int, runs: int, generator: torch.Generator | None) -> Tensor:
    """``runs`` independent greedy k-means++ seedings (runs, K, D): the first centre
    uniformly at random; each next one the best (lowest resulting potential) of
    2 + ln K candidates drawn with probability proportional to the squared distance to
    the nearest chosen centre."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    u = _rand(runs * (1 + (k - 1) * trials), generator, x.device)
    first, u = u[:runs], u[runs:].view(k - 1, runs, trials)
    rows = torch.arange(runs, device=x.device)
    x_sq = (x * x).sum(1)
    centres = torch.empty(runs, k, x.shape[1], dtype=x.dtype, device=x.device)
    centres[:, 0] = x[(first * n).long().clamp_(max=n - 1)]
    min_d = _sq_dist_to(x, x_sq, centres[:, 0])  # (runs, N)
    uniform = torch.arange(1, n + 1, device=x.device, dtype=torch.float64).expand(runs, n)
    for j in range(1, k):
        cum = torch.cumsum(min_d, 1)
        # A run whose points all coincide with its centres (fewer than K distinct points)
        # draws uniformly; its duplicate centre stays empty.
        cum = torch.where(cum[:, -1:] > 0, cum, uniform)
        cand = torch.searchsorted(cum, u[j - 1] * cum[:, -1:], right=True).clamp_(max=n - 1)  # (runs, trials)
        d_cand = _sq_dist_to(x, x_sq, x[cand.flatten()]).view(runs, trials, n)
        d_new = torch.minimum(min_d[:, None, :], d_cand)
        best = torch.argmin(d_new.sum(2), 1)  # first minimum on ties
        centres[:, j] = x[cand[rows, best]]
        min_d = d_new[rows, best]
    return centres


def _lloyd(x: Tensor, centres: Tensor, max_iter: int) -> tuple[Tensor, Tensor, Tensor]:
    """Lloyd iterations of R runs at once from ``centres`` (R, K, D) until no run's
    assignments change (at most ``max_iter`` updates): labels (R, N), centres (R, K, D)
    and each point's squared distance to its centre (R, N). An empty cluster is
    re-seeded at its run's point farthest from its centre (the next farthest for the
    next empty cluster; ties by index)."""
    k = centres.shape[1]
    x_sq = (x * x).sum(1)
    labels, score = _assign(x, centres)
    for _ in range(max_iter):
        sums, counts = _cluster_sums(x, labels, k)
        centres = sums / counts.clamp(min=1)[..., None].to(x.dtype)
        empty = counts == 0
        if bool(empty.any()):
            min_d = (x_sq + 2.0 * score).clamp_min(0.0)  # (R, N)
            far = torch.sort(min_d, dim=1, descending=True, stable=True).indices  # (R, N)
            rank = (torch.cumsum(empty, 1) - 1).clamp_(min=0, max=x.shape[0] - 1)  # e-th empty -> e-th farthest
            point = torch.gather(far, 1, rank)  # (R, K)
            movable = empty & (torch.gather(min_d, 1, point) > 0)  # no point off its centre: nothing to split
            centres = torch.where(movable[..., None], x[point], centres)
        new_labels, score = _assign(x, centres)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels, centres, (x_sq + 2.0 * score).clamp_min(0.0)


def kmeans(features: Tensor, k: int, generator: torch.Generator | None = None, max_iter: int = 50,
           n_init: int = 8, sample_size: int | None = 2048) -> tuple[Tensor, Tensor]:
    """k-means (greedy k-means++ seeding, then Lloyd) on the features' device.

    ``features`` (N, D), N >= k. The starting centres are the best (lowest inertia) of
    ``n_init`` k-means++ + Lloyd runs, computed together, on a random subsample of
    ``sample_size`` points (all points when N <= sample_size or sample_size is None);
    Lloyd iterations on all points then run from there until the assignments stop
    changing (at most ``max_iter`` updates). Why: in 64-d the within-cluster distances
    are comparable to the between-cluster ones, so a single D²-sampled seeding often
    puts two seeds in one wide cluster, which Lloyd cannot undo; restarts on a
    subsample cost little (at most ``INIT_ITER`` updates each), and few full-data
    iterations follow a good start.
    ``n_init=1, sample_size=None`` is plain k-means++ + Lloyd. An empty cluster is
    re-seeded at the point farthest from its centre. Returns (labels (N,) long,
    centres (K, D)); the labels are each point's nearest centre.
    """
    if features.ndim != 2:
        raise ValueError(f"kmeans: features must be (N, D), got shape {tuple(features.shape)}")
    n = features.shape[0]
    if k < 1 or n < k:
        raise ValueError(f"kmeans: need k >= 1 and at least k points, got k={k}, N={n}")
    if n_init < 1:
        raise ValueError(f"kmeans: n_init must be >= 1, got {n_init}")
    x = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    subsample = sample_size is not None and n > max(sample_size, k)
    if subsample:
        device = x.device if generator is None else generator.device
        xs = x[torch.randperm(n, generator=generator, device=device)[:sample_size].to(x.device)]
    else:
        xs = x
    # On a subsample the runs only have to pick the basin: a few updates tell them apart.
    labels, centres, sq = _lloyd(xs, _kmeans_pp(xs, k, n_init, generator),
                                 min(max_iter, INIT_ITER) if subsample else max_iter)
    best = int(torch.argmin(sq.sum(1)))  # the first of equally good runs
    if not subsample:
        return labels[best], centres[best]
    labels, centres, _ = _lloyd(x, centres[best: best + 1], max_iter)
    return labels[0], centres[0]


def _greedy_partition(centres: Tensor, n_partition: Sequence[int]) -> list[list[int]]:
    """Groups of the given sizes, each the subset of the remaining clusters with the
    largest mean pairwise cosine distance of its centres (ties: lexicographically
    smallest subset). Zero centres (empty clusters) are at cosine distance 1 from all."""
    c = torch.nn.functional.normalize(centres.detach().double().cpu(), dim=1)
    dist = 1.0 - c @ c.T  # (K, K)
    remaining = list(range(centres.shape[0]))
    groups: list[list[int]] = []
    for size in n_partition:
        combos = torch.tensor(list(itertools.combinations(remaining, size)), dtype=torch.long)  # lexicographic
        if size > 1:
            i, j = torch.triu_indices(size, size, offset=1)
            score = dist[combos[:, i], combos[:, j]].mean(1)
            best = int(torch.argmax(score))  # first maximum = lexicographically smallest
        else:
            best = 0  # mean pairwise distance 0 for all: the smallest id
        group = combos[best].tolist()
        groups.append(group)
        remaining = [r for r in remaining if r not in group]
    return groups


def _random_pick(groups: Tensor, counts: Tensor, generator: torch.Generator | None) -> Tensor:
    """Boolean (N,): in each group g (ids in [0, G)), ``counts[g]`` members chosen
    uniformly at random. The random keys are a random permutation; a stable sort by
    group of the permuted voxels orders them by (group, key), and a voxel is picked
    when its rank inside its group is below the group's count."""
    n, device = groups.shape[0], groups.device
    perm_device = device if generator is None else generator.device
    order = torch.randperm(n, generator=generator, device=perm_device).to(device)
    order = order[torch.sort(groups[order], stable=True).indices]
    sizes = torch.bincount(groups, minlength=counts.shape[0])
    start = torch.cumsum(sizes, 0) - sizes
    g_sorted = groups[order]
    rank = torch.arange(n, device=device) - start[g_sorted]
    picked = torch.zeros(n, dtype=torch.bool, device=device)
    picked[order] = rank < counts[g_sorted]
    return picked


def _check_settings(n_clusters: int, n_partition: Sequence[int], base_mask_ratio: Sequence[float]) -> None:
    if n_clusters < 1:
        raise ValueError(f"I²Mask: n_clusters must be >= 1, got {n_clusters}")
    if len(n_partition) != len(base_mask_ratio):
        raise ValueError(f"I²Mask: n_partition {tuple(n_partition)} and base_mask_ratio "
                         f"{tuple(base_mask_ratio)} must have the same length")
    if any(s < 1 for s in n_partition) or sum(n_partition) != n_clusters:
        raise ValueError(f"I²Mask: group sizes n_partition {tuple(n_partition)} must be >= 1 "
                         f"and sum to n_clusters={n_clusters}")
    if any(not 0.0 <= r <= 1.0 for r in base_mask_ratio):
        raise ValueError(f"I²Mask: base_mask_ratio {tuple(base_mask_ratio)} must lie in [0, 1]")


def i2mask(features: Tensor, n_clusters: int = 8, n_partition: Sequence[int] = (3, 3, 2),
           lambda_threshold: float = 0.6, base_mask_ratio: Sequence[float] = (0.9, 0.45, 0.0),
           generator: torch.Generator | None = None, labels: Tensor | None = None,
           max_iter: int = 50, n_init: int = 8, sample_size: int | None = 2048) -> I2MaskResult:
    """I²Mask of one frame.

    ``features`` (N, D) float: the voxels' teacher features. ``labels`` (N,) optional
    cluster ids in [0, n_clusters) that replace k-means. A frame with fewer voxels than
    clusters puts each voxel in its own cluster. ``max_iter``, ``n_init``, ``sample_size``
    go to :func:`kmeans`. Centres are the mean feature of each
    cluster (zero for an empty cluster, which still takes part in the partition).
    """
    _check_settings(n_clusters, n_partition, base_mask_ratio)
    if features.ndim != 2:
        raise ValueError(f"I²Mask: features must be (N, D), got shape {tuple(features.shape)}")
    x = features.detach()
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    n, k, device = x.shape[0], n_clusters, x.device
    if labels is not None:
        labels = labels.to(device=device, dtype=torch.long)
        if labels.shape != (n,):
            raise ValueError(f"I²Mask: labels must be ({n},), got shape {tuple(labels.shape)}")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"I²Mask: labels must lie in [0, {k})")
    elif n >= k:
        labels = kmeans(x, k, generator=generator, max_iter=max_iter, n_init=n_init, sample_size=sample_size)[0]
    else:
        labels = torch.arange(n, device=device)

    sums, counts = _cluster_sums(x, labels[None], k)
    sums, counts = sums[0], counts[0]
    centres = sums / counts.clamp(min=1)[:, None].to(x.dtype)
    partition = _greedy_partition(centres, n_partition)
    base = torch.empty(k, dtype=torch.float32)
    for group, ratio in zip(partition, base_mask_ratio, strict=True):
        base[group] = ratio
    base = base.to(device)

    # Intra-class: mean distance to the centre over the members beyond lambda.
    dist = torch.linalg.vector_norm(x - centres[labels], dim=1)
    far = (dist > lambda_threshold).to(x.dtype)
    far_sum = _cluster_sums(torch.stack([dist * far, far], 1), labels[None], k)[0][0]
    d_mean = torch.where(far_sum[:, 1] > 0, far_sum[:, 0] / far_sum[:, 1].clamp(min=1), 0.0).float()
    d_max = d_mean.max()
    r_c = torch.where(d_max > 0, 1.0 - d_mean / d_max.clamp(min=torch.finfo(torch.float32).tiny), 1.0)
    cluster_ratio = base * r_c

    n_mask = torch.round(cluster_ratio.double() * counts.double()).long()
    mask = _random_pick(labels, n_mask, generator)
    return I2MaskResult(mask=mask, cluster=labels, cluster_ratio=cluster_ratio, partition=partition,
                        r_c=r_c, distance_mean=d_mean)


def i2mask_batch(features: Tensor, batch_index: Tensor, valid: Tensor | None = None, n_clusters: int = 8,
                 n_partition: Sequence[int] = (3, 3, 2), lambda_threshold: float = 0.6,
                 base_mask_ratio: Sequence[float] = (0.9, 0.45, 0.0),
                 generator: torch.Generator | None = None, max_iter: int = 50, n_init: int = 8,
                 sample_size: int | None = 2048) -> I2MaskBatchResult:
    """I²Mask of every frame of a batch.

    ``features`` (N, D) teacher features, ``batch_index`` (N,) frame of each voxel,
    ``valid`` (N,) bool, False for voxels without a teacher target. Only valid voxels
    are clustered; the invalid voxels of a frame are masked uniformly at random at the
    frame's masking fraction of its valid voxels (for a frame without any valid voxel:
    the group-size-weighted mean of ``base_mask_ratio``, I²Mask's fraction when every
    r_c = 1). Frames are processed in increasing frame id.
    """
    _check_settings(n_clusters, n_partition, base_mask_ratio)
    n, device = features.shape[0], features.device
    if batch_index.shape != (n,) or (valid is not None and valid.shape != (n,)):
        raise ValueError(f"i2mask_batch: batch_index and valid must be ({n},)")
    batch_index = batch_index.to(device=device, dtype=torch.long)
    valid = torch.ones(n, dtype=torch.bool, device=device) if valid is None else valid.to(device=device,
                                                                                           dtype=torch.bool)
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    cluster = torch.full((n,), -1, dtype=torch.long, device=device)
    default_fraction = sum(s * r for s, r in zip(n_partition, base_mask_ratio, strict=True)) / sum(n_partition)

    order = torch.argsort(batch_index, stable=True)
    _, sizes = torch.unique_consecutive(batch_index[order], return_counts=True)
    for rows in torch.split(order, sizes.tolist()):
        ok = valid[rows]
        rows_valid, rows_invalid = rows[ok], rows[~ok]
        if len(rows_valid):
            res = i2mask(features[rows_valid], n_clusters=n_clusters, n_partition=n_partition,
                         lambda_threshold=lambda_threshold, base_mask_ratio=base_mask_ratio,
                         generator=generator, max_iter=max_iter, n_init=n_init, sample_size=sample_size)
            mask[rows_valid] = res.mask
            cluster[rows_valid] = res.cluster
            n_masked, n_valid = int(res.mask.sum()), len(rows_valid)
        else:
            n_masked, n_valid = default_fraction, 1
        if len(rows_invalid):
            count = round(n_masked * len(rows_invalid) / n_valid)
            groups = torch.zeros(len(rows_invalid), dtype=torch.long, device=device)
            mask[rows_invalid] = _random_pick(groups, torch.tensor([count], device=device), generator)
    return I2MaskBatchResult(mask=mask, cluster=cluster)
