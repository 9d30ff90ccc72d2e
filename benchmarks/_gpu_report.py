"""The goals and the table of ``gpu_check.py``'s JSON (printed after a run, and by ``--table``
as the README's GPU table)."""

from __future__ import annotations

GOALS = (("DSVT forward, full nuScenes profile, bf16", "ms/frame", 15.0, "<="),
         ("pre-training step, batch 4", "frames/s", 20.0, ">="),
         ("I²Mask vs scikit-learn KMeans, 30k x 64", "x faster", 50.0, ">="))


def goals(res: dict) -> list[dict]:
    """The issue's goals against the figures (met: None when a figure is missing or on the CPU)."""
    fwd = [r["ms_per_frame"] for r in (res.get("student_nuscenes") or {}).get("runs", [])
           if r["mode"] == "forward" and r["precision"] == "bf16" and "ms_per_frame" in r]
    values = (min(fwd) if fwd else None, (res.get("pretrain_step") or {}).get("frames_per_s"),
              (res.get("i2mask") or {}).get("sklearn_speedup"))
    out = []
    for (what, unit, target, op), v in zip(GOALS, values, strict=True):
        met = None if v is None or res["device"] != "cuda" else (v <= target if op == "<=" else v >= target)
        out.append({"goal": what, "target": f"{op} {target:g} {unit}", "value": v, "met": met})
    return out


def table_rows(res: dict) -> list[tuple[str, str]]:
    """(figure, value) rows of the printed table and of the README's GPU table."""
    rows: list[tuple[str, str]] = []
    m = res.get("machine", {})
    rows.append(("machine", f"{m.get('gpu') or 'CPU'}, torch {m.get('torch')}, CUDA {m.get('cuda')}, "
                            f"Python {m.get('python')}"))
    k = res.get("kernels")
    if k:
        rows.append(("kernels vs references", f"{len(k['checks'])} comparisons, {k['failures']} mismatches"
                                              + ("" if k.get("with_cuda") and res["device"] == "cuda" else
                                                 " (native CPU only)")))
    for ds in ("nuscenes", "waymo"):
        s = res.get(f"student_{ds}")
        for r in (s or {}).get("runs", []):
            name = (f"student {ds} ({s['voxels']:,} voxels) {r['mode'].replace('_', ' + ')} {r['precision']}"
                    f"{' compiled' if r['compiled'] else ''}")
            if "error" in r:
                rows.append((name, f"failed: {r['error']}"))
                continue
            tf = f", {r['tflops']:.3g} TFLOP/s" if r.get("tflops") is not None else ""
            frac = f" ({100 * r['bf16_peak_fraction']:.1f}% of bf16 peak)" if r.get("bf16_peak_fraction") else ""
            mem = f", peak {r['peak_mib']:.0f} MiB" if r.get("peak_mib") is not None else ""
            rows.append((name, f"{r['ms_per_frame']:.1f} ms/frame{mem}{tf}{frac}"))
    for name in ("pretrain_step", "detection_step"):
        s = res.get(name)
        if s:
            syncs = s["syncs"]
            sy = (f", {syncs['total']} host syncs a step ({syncs['engine']} in the engine)" if syncs.get("counted")
                  else f", engine host reads {s['engine_host_reads']} in {s['steps']} steps")
            mem = f", peak {s['peak_mib']:.0f} MiB" if s.get("peak_mib") is not None else ""
            note = (f" (AMP failed: {s['amp_error']})" if s.get("amp_error") else "") + \
                (f" (out of memory at batch {s['oom_at']})" if s.get("oom_at") else "")
            rows.append((f"{name.replace('_', ' ')} (batch {s['frames']}, {s['amp']})",
                         f"{s['frames_per_s']:.2f} frames/s{mem}{sy}{note}"))
    i2 = res.get("i2mask")
    if i2:
        sk = (f", sklearn KMeans (n_init auto) {i2['sklearn_ms']:.0f} ms: {i2['sklearn_speedup']:.1f}x" if i2.get("sklearn_ms")
              else f" ({i2.get('skipped', 'no sklearn figure')})")
        if i2.get("sklearn_n_init10_ms"):
            sk += f"; n_init 10 {i2['sklearn_n_init10_ms']:.0f} ms: {i2['sklearn_n_init10_speedup']:.1f}x"
        rows.append((f"I²Mask {i2['n']:,} x 64 on {i2['device']}", f"{i2['i2mask_ms']:.1f} ms{sk}"))
    for g in res.get("goals", []):
        v = "-" if g["value"] is None else f"{g['value']:.3g}"
        met = {True: "met", False: "not met", None: "n/a: " + ("not measured" if g["value"] is None else
                                                            "CPU fallback")}[g["met"]]
        rows.append((f"goal: {g['goal']} {g['target']}", f"{v} ({met})"))
    return rows


def print_table(res: dict, markdown: bool = False) -> None:
    rows = table_rows(res)
    if markdown:
        print("| figure | value |\n|---|---|")
        for a, b in rows:
            print(f"| {a} | {b} |")
        return
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
