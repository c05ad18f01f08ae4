"""Cost and precision of `ExpertStats.update` (the expert CKA Gram update), per update, one torch thread.

Run by hand from the repository root (not a unit test; about 1-2 minutes on 2 shared CPU cores)::

    python bench/expert_gram_bench.py                      # this tree only (about 3 minutes)
    python bench/expert_gram_bench.py --baseline 1413574   # also the ExpertStats of that git revision

``time``  one ``update`` of the rows `inspect()` gives it (every row in the expert sample; ``E``
    float32 tensors ``[k, d]``) for the big model of ``bench/scale_bench.py`` (8 experts of 128
    units, Σd = 1024) and the MMoE paper's (8 x 16, Σd = 128), k = 268 (a 16,384-row statistics
    chunk at the sample rate of a 1M-row source) and k = 1,100. With ``--baseline REV``,
    ``mmoe_inspect/stats/expert.py`` of that revision is loaded beside this tree's and both are
    timed in a shuffled order every repetition; ms "min / median" over repetitions.
``recording``  the recording pass of ``bench/scale_bench.py`` part (a) (hooks + every statistic
    `inspect()` updates, one statistics chunk of 4 batches of 4096 rows per call) against the plain
    forward, for both models; with ``--baseline``, a second recording pass whose `ExpertStats` is the
    baseline's, in the same interleaved run. Ratio = median of per-repetition ratios to the plain
    forward; CPU-time ratio beside it (robust to other jobs on the cores).
``precision``  |ΔCKA| between `ExpertStats` fed float32 outputs in updates of k rows and
    `linear_cka` in float64 on the same rows (float32 values), for planted cases: ReLU outputs
    with mean/std = 100, near-duplicate experts (CKA ~ 0.999), independent experts, a dead expert
    (NaN on both sides); the same with float64 input (the float64 path) for reference.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmoe_inspect.functional import linear_cka, row_hash
from mmoe_inspect.stats import ExpertStats

SHAPES = ((268, 8, 128), (1100, 8, 128), (268, 8, 16), (1100, 8, 16))  # (rows per update, E, d)
RATE = 16_384 / 1_000_000


@functools.cache
def baseline_class(rev: str) -> type:
    """`ExpertStats` from ``mmoe_inspect/stats/expert.py`` at git revision ``rev``."""
    src = subprocess.run(
        ["git", "show", f"{rev}:mmoe_inspect/stats/expert.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "expert_baseline.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("expert_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.ExpertStats


def sampled_inputs(k: int, e: int, d: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``E`` ReLU expert outputs ``[k, d]`` of a shared input and ``k`` row indices in the sample."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(40 * k * int(1 / RATE))
    rows = rows[row_hash(rows, 0) < RATE][:k]
    x = torch.randn(k, 64, generator=gen)
    return [torch.relu(x @ torch.randn(64, d, generator=gen)) for _ in range(e)], rows


def part_time(classes: dict[str, type], reps: int) -> list[dict[str, Any]]:
    out = []
    for k, e, d in SHAPES:
        parts, rows = sampled_inputs(k, e, d)
        metrics = {
            n: c(e, d, sample_rate=RATE, max_sample_per_update=4 * k, seed=0) for n, c in classes.items()
        }
        for m in metrics.values():
            for _ in range(3):
                m.update(parts, rows)
        times: dict[str, list[float]] = {n: [] for n in metrics}
        for _ in range(reps):
            order = list(metrics)
            random.shuffle(order)
            for n in order:
                t = time.perf_counter()
                metrics[n].update(parts, rows)
                times[n].append((time.perf_counter() - t) * 1e3)
        row = {"rows": k, "experts": f"{e} x {d}"}
        for n, ts in times.items():
            row[n] = (min(ts), statistics.median(ts))
        out.append(row)
        cells = "  ".join(f"{n} {lo:.3f} / {med:.3f} ms" for n, (lo, med) in ((n, row[n]) for n in times))
        print(f"time  k={k:5d}  {e} x {d:3d}  {cells}", flush=True)
    return out


def part_recording(baseline: type | None, quick: bool) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import record_bench as rb

    chunk = 16_384 // rb.BATCH
    for name, spec in rb.overhead_models().items():
        model, d = spec["model"], spec["d"]
        x, lab = rb.make_inputs(model, d)
        plain = copy.deepcopy(model).eval()
        passes = {"recording": rb.RecordingPass(model, experts=True, outputs=True, sample_rate=RATE)}
        if baseline is not None:
            passes["recording_baseline"] = rb.RecordingPass(
                model, experts=True, outputs=True, sample_rate=RATE, expert_cls=baseline
            )
        fns = {"plain": lambda m=plain, x=x: [m(x) for _ in range(chunk)]}
        for key, p in passes.items():
            fns[key] = lambda p=p, x=x, lab=lab: [p.step(x, lab) for _ in range(chunk)]
        big = "256" in name
        reps = (6 if quick else 30) if big else (10 if quick else 80)
        cpu: dict[str, list[float]] = {}
        try:
            with torch.inference_mode():
                t = rb.interleaved(fns, reps, min_block_s=0.02, budget_s=5 if quick else 60, cpu_times=cpu)
        finally:
            for p in passes.values():
                p.close()
        if baseline is not None:  # the swap took: the two passes used different classes
            assert type(passes["recording_baseline"].expert_stats) is baseline
        cells = [f"plain {min(t['plain']) / chunk * 1e3:.2f} ms/batch"]
        for key in passes:
            ratio, ratio_cpu = rb.paired_ratio(t[key], t["plain"]), rb.paired_ratio(cpu[key], cpu["plain"])
            cells.append(f"{key} x{ratio:.3f} (CPU time x{ratio_cpu:.3f})")
        print(f"recording  {name}  {len(t['plain'])} reps: " + ", ".join(cells), flush=True)


def planted(case: str, n: int, e: int, d: int, seed: int = 1) -> torch.Tensor:
    """``[n, E, d]`` float32 expert outputs of one planted case."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=gen)

    def relu_expert() -> torch.Tensor:
        return torch.relu(x @ torch.randn(16, d, generator=gen))

    if case == "mean/std=100":  # ReLU outputs far from zero: mean 100, spread 1
        h = [x @ torch.randn(16, d, generator=gen) for _ in range(e)]
        out = [torch.relu(100.0 + hi / hi.std()) for hi in h]
    elif case == "near-duplicate":  # every expert = one base + 3% noise: CKA ~ 0.999
        base = relu_expert()
        out = [base + 0.03 * base.std() * torch.randn(n, d, generator=gen) for _ in range(e)]
    elif case == "independent":
        out = [torch.relu(torch.randn(n, d, generator=gen)) for _ in range(e)]
    elif case == "dead":  # the last expert is always zero
        out = [relu_expert() for _ in range(e - 1)] + [torch.zeros(n, d)]
    else:
        raise ValueError(case)
    return torch.stack(out, dim=1).float()


CASES = ("mean/std=100", "near-duplicate", "independent", "dead")


def cka_error(z: torch.Tensor, k: int, dtype: torch.dtype) -> tuple[float, float, bool]:
    """``(max |ΔCKA|, min reference CKA off the diagonal, NaN pattern equal)`` of `ExpertStats` fed
    ``z [n, E, d]`` as ``dtype`` in updates of ``k`` rows, against `linear_cka` in float64."""
    n, e, d = z.shape
    m = ExpertStats(e, d, sample_rate=1.0, max_sample_per_update=k)
    for lo in range(0, n, k):
        m.update(z[lo : lo + k].to(dtype), torch.arange(lo, min(lo + k, n)))
    got = m.compute().cka
    z64 = z.double()
    ref = torch.tensor(
        [[linear_cka(z64[:, a], z64[:, b]).item() for b in range(e)] for a in range(e)], dtype=torch.float64
    )
    nan_same = bool(torch.equal(got.isnan(), ref.isnan()))
    fin = ref.isfinite() & got.isfinite()
    off = fin & ~torch.eye(e, dtype=torch.bool)
    err = float((got - ref)[fin].abs().max()) if fin.any() else 0.0
    return err, float(ref[off].min()) if off.any() else float("nan"), nan_same


def part_precision(updates: int) -> list[dict[str, Any]]:
    out = []
    for k, e, d in SHAPES:
        for case in CASES:
            z = planted(case, updates * k, e, d)
            err32, ref_min, same32 = cka_error(z, k, torch.float32)
            err64, _, same64 = cka_error(z, k, torch.float64)
            row = {"rows": k, "experts": f"{e} x {d}", "case": case, "float32": err32, "float64": err64}
            row |= {"min_ref_cka": ref_min, "nan_pattern_equal": same32 and same64}
            out.append(row)
            print(
                f"cka   k={k:5d}  {e} x {d:3d}  {case:15s} |ΔCKA| float32 path {err32:.1e}  float64 path "
                f"{err64:.1e}  (min ref CKA {ref_min:.4f}, NaN pattern equal: {row['nan_pattern_equal']})",
                flush=True,
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="git revision whose ExpertStats is timed beside this tree's")
    ap.add_argument("--parts", default="time,recording,precision")
    ap.add_argument("--quick", action="store_true", help="few repetitions of the recording part")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--updates", type=int, default=4, help="updates per precision case")
    args = ap.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    parts = args.parts.split(",")
    if "time" in parts:
        classes: dict[str, type] = {"now": ExpertStats}
        if args.baseline:
            classes[args.baseline] = baseline_class(args.baseline)
        part_time(classes, args.reps)
    if "recording" in parts:
        part_recording(baseline_class(args.baseline) if args.baseline else None, args.quick)
    if "precision" in parts:
        part_precision(args.updates)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
