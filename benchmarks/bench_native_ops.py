"""Native ops of csrc/ against their pure-torch references.

Run: .venv/bin/python benchmarks/bench_native_ops.py
Prints the median time of each implementation and the speed-up ratio.
"""

from __future__ import annotations

import statistics
import time

import torch

from gpicture.ops import in_group_index_reference
from gpicture.ops.native import load_native


def median_ms(fn, repeat: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    native = load_native()
    print(f"in_group_index, 1 thread, native={'yes' if native else 'NO (reference only)'}")
    for n, g in [(20_000, 500), (200_000, 5_000), (1_000_000, 20_000)]:
        groups = torch.randint(0, g, (n,), generator=torch.Generator().manual_seed(0))
        ref = median_ms(lambda: in_group_index_reference(groups))
        line = f"  N={n:>9,} groups={g:>6,}  torch ref {ref:8.2f} ms"
        if native is not None:
            nat = median_ms(lambda: native.in_group_index(groups, g))
            line += f"  native {nat:8.2f} ms  speed-up x{ref / nat:.1f}"
        print(line)


if __name__ == "__main__":
    main()
