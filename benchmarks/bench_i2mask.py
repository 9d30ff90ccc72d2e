"""I²Mask: our torch k-means + vectorized partition/ratios against the original algorithm.

Run: .venv/bin/python benchmarks/bench_i2mask.py [--voxels 30000] [--repeat 5] [--threads T]
(needs scikit-learn, a benchmark-only dependency).

"The original algorithm" is what the published GPICTURE code does per frame: sklearn
``KMeans(n_clusters=8, n_init=10, random_state=0)`` on the CPU, then the greedy
cosine-distance partition and the intra-class ratios in numpy. Both run on the same
features: 8 Gaussian blobs in 64-d with a realistic spread, L2-normalised like the
teacher's outputs; and, where ``data/teacher/nuscenes/train.zarr`` exists, the valid
voxels of real teacher features (one frame, and 30k voxels pooled from consecutive
frames). Prints the median times, the speed-up (target >= 10x) and how far the two
per-cluster mask ratios are apart once clusters are matched by their centres.
"""

from __future__ import annotations

import os

# torch and scikit-learn each bring their own OpenMP runtime; with both loaded, threads
# of one spin-wait while the other works and the timings of both swing by 10-100x on a
# small machine. Passive waiting (set before either is imported) keeps them honest.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import itertools
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from gpicture.models.i2mask import i2mask

K, SIZES, LAMBDA, BASE = 8, (3, 3, 2), 0.6, (0.9, 0.45, 0.0)
TEACHER = Path("data/teacher/nuscenes/train.zarr")


def blobs(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """8 Gaussian blobs of unequal sizes and spreads, rows L2-normalised (teacher-like:
    distances to the centre ~0.3-1.0, so lambda = 0.6 splits the members)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(K, 3.0))
    labels = rng.choice(K, size=n, p=weights)
    spread = rng.uniform(0.04, 0.12, size=K)  # per-dimension std: noise norm ~0.3-1.0
    x = centres[labels] + rng.normal(size=(n, dim)) * spread[labels, None]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def original_ratios(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """sklearn k-means (n_init=10) + greedy partition and intra-class ratios in numpy:
    (labels, per-cluster mask ratio, partition)."""
    km = KMeans(n_clusters=K, n_init=10, random_state=0).fit(x)
    labels = km.labels_
    centres = np.stack([x[labels == k].mean(0) for k in range(K)]).astype(np.float64)
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    cosdist = 1.0 - unit @ unit.T
    remaining, partition = list(range(K)), []
    for s in SIZES:
        combos = list(itertools.combinations(remaining, s))
        scores = [np.mean([cosdist[i, j] for i, j in itertools.combinations(c, 2)]) if s > 1 else 0.0
                  for c in combos]
        best = combos[int(np.argmax(scores))]
        partition.append(list(best))
        remaining = [r for r in remaining if r not in best]
    dist = np.linalg.norm(x - centres[labels], axis=1)
    d_mean = np.array([dist[(labels == k) & (dist > LAMBDA)].mean() if ((labels == k) & (dist > LAMBDA)).any()
                       else 0.0 for k in range(K)])
    r_c = 1.0 - d_mean / d_mean.max() if d_mean.max() > 0 else np.ones(K)
    base = np.zeros(K)
    for group, b in zip(partition, BASE, strict=True):
        base[group] = b
    return labels, base * r_c, partition


def timed(fn, repeat: int) -> tuple[float, object]:
    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, out


def compare(name: str, x: np.ndarray, repeat: int) -> None:
    xt = torch.from_numpy(x)
    ours_ms, ours = timed(lambda: i2mask(xt, generator=torch.Generator().manual_seed(0)), repeat)
    orig_ms, (labels, ratio, partition) = timed(lambda: original_ratios(x), max(1, repeat // 2))
    # match clusters by their centres (Hungarian on centre distances)
    c_ours = np.stack([x[ours.cluster.numpy() == k].mean(0) for k in range(K)])
    c_orig = np.stack([x[labels == k].mean(0) for k in range(K)])
    cost = np.linalg.norm(c_ours[:, None] - c_orig[None], axis=2)
    row, col = linear_sum_assignment(cost)
    to_orig = dict(zip(row.tolist(), col.tolist(), strict=True))
    diff = np.abs(ours.cluster_ratio.numpy()[row] - ratio[col]).max()
    agree = np.mean(np.array([to_orig[c] for c in ours.cluster.tolist()]) == labels)
    same_partition = [sorted(to_orig[c] for c in g) for g in ours.partition] == [sorted(g) for g in partition]
    inertia_ours = float(((x - c_ours[ours.cluster.numpy()]) ** 2).sum())
    inertia_orig = float(((x - c_orig[labels]) ** 2).sum())
    beyond = float((np.linalg.norm(x - c_ours[ours.cluster.numpy()], axis=1) > LAMBDA).mean())
    print(f"{name}: N={len(x)} D={x.shape[1]}, {beyond:.0%} of the voxels farther than lambda from their centre")
    print(f"  ours (torch k-means, CPU, {torch.get_num_threads()} threads):  {ours_ms:9.1f} ms")
    print(f"  original (sklearn KMeans n_init=10 + numpy):  {orig_ms:9.1f} ms")
    print(f"  speed-up: {orig_ms / ours_ms:.1f}x (target >= 10x)")
    print(f"  voxel assignment agreement {agree:.4f}, same partition: {same_partition}, "
          f"max |ratio difference| {diff:.2e}, max centre distance {cost[row, col].max():.2e}")
    print(f"  k-means inertia ours / original: {inertia_ours / inertia_orig:.4f}")
    print(f"  ratios ours {np.round(ours.cluster_ratio.numpy()[row].astype(np.float64), 4).tolist()}")
    print(f"  ratios orig {np.round(ratio[col], 4).tolist()}")


def teacher_features(n: int) -> tuple[np.ndarray, np.ndarray] | None:
    if not TEACHER.exists():
        return None
    from gpicture.teacher.cache import TeacherStore

    store = TeacherStore.open(TEACHER)
    feats, valid = store.frame(0)
    one = feats[valid]
    pooled, i = [], 0
    while sum(len(p) for p in pooled) < n and i < len(store):
        f, v = store.frame(i)
        pooled.append(f[v])
        i += 1
    return one, np.concatenate(pooled)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=30000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for both torch and sklearn (default: as set)")
    args = ap.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    compare("synthetic blobs", blobs(args.voxels), args.repeat)
    real = teacher_features(args.voxels)
    if real is None:
        print(f"{TEACHER} not found: no real teacher features")
        return
    compare("teacher features, frame 0 (valid voxels)", real[0], args.repeat)
    compare("teacher features, pooled frames (valid voxels)", real[1], args.repeat)


if __name__ == "__main__":
    main()
