"""Small fixed costs that the library's design choices rest on, measured on one CPU thread.

Writes bench/results/small_ops.md (and .json): the per-op cost of small tensor ops (why the statistics
are stacked over gates and fed in chunks), the row hash, pandas dtype lookups, the DataFrame ->
tensor transposing copy, fresh vs reused temporaries, int32 vs int64 conversion, the model
fingerprint and one expert-Gram update. Run: `nice -n 10 python bench/small_ops_bench.py` (~30 s).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

OUT = Path(__file__).parent / "results"


def per_call_us(fn: Callable[[], object], min_s: float = 0.3) -> float:
    """Median over 5 rounds of the mean time per call, in µs."""
    fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t > min_s / 5:
            break
        n *= 2
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return float(np.median(rounds))


def small_ops() -> dict[str, float]:
    """Typical ops of a statistics update on a `[4096, 8]` float32 gate, and on a tiny `[8]` tensor."""
    g = torch.softmax(torch.randn(4096, 8), dim=1)
    tiny = torch.rand(8)
    out: dict[str, float] = {}
    for name, x in (("[4096, 8]", g), ("[8]", tiny)):
        ops = {
            "sum": lambda x=x: x.sum(0),
            "mul": lambda x=x: x * x,
            "log": lambda x=x: x.clamp_min(1e-12).log(),
            "argmax": lambda x=x: x.argmax(-1),
            "to float64": lambda x=x: x.to(torch.float64),
        }
        for op, fn in ops.items():
            out[f"{op} on {name}"] = per_call_us(fn)
    return out


def row_hash_cost() -> float:
    from mmoe_inspect.functional.sampling import row_hash

    rows = torch.arange(4096)
    return per_call_us(lambda: row_hash(rows, 7))


def dtype_lookups() -> dict[str, float]:
    from mmoe_inspect.data.columns import column_kinds

    frame = pd.DataFrame(np.random.rand(64, 100).astype(np.float32), columns=[f"f{i}" for i in range(100)])
    cols = list(frame.columns)
    return {
        "frame.dtypes[c], per column": per_call_us(lambda: frame.dtypes[cols[37]]),
        "column_kinds over 100 columns": per_call_us(lambda: column_kinds(frame, cols)),
    }


def transposing_copy() -> dict[str, float]:
    """pandas holds columns as `[columns, rows]`; a C-ordered `[rows, columns]` matrix is a transpose."""
    f_ordered = np.asfortranarray(np.random.rand(4096, 100).astype(np.float32))
    return {
        "numpy C-order copy of an F-ordered 4096 x 100 float32": per_call_us(
            lambda: np.ascontiguousarray(f_ordered)
        ),
        "torch .contiguous() of the same array": per_call_us(
            lambda: torch.from_numpy(f_ordered).contiguous()
        ),
    }


def temporaries() -> dict[str, float]:
    """A 2 MB temporary allocated afresh each time vs written into a reused buffer (`Workspace`)."""
    x = torch.rand(512 * 1024)  # 2 MB of float32
    buf = torch.empty_like(x)
    return {
        "x * 2 into a fresh 2 MB tensor": per_call_us(lambda: x * 2),
        "x * 2 into a reused 2 MB tensor": per_call_us(lambda: torch.mul(x, 2, out=buf)),
    }


def int_conversion() -> dict[str, float]:
    t = torch.rand(4, 10, 4096) * 63
    return {
        "float32 -> int32, [4, 10, 4096]": per_call_us(lambda: t.to(torch.int32)),
        "float32 -> int64, [4, 10, 4096]": per_call_us(lambda: t.to(torch.int64)),
    }


def fingerprint_cost() -> tuple[float, int]:
    from mmoe_inspect.recording.fingerprint import fingerprint
    from mmoe_inspect.testing.planted import PlantedMMoE

    model = PlantedMMoE()
    n = len(list(model.parameters())) + len(list(model.buffers()))
    return per_call_us(lambda: fingerprint(model)), n


def gram_update_us() -> dict[str, float]:
    from mmoe_inspect.stats import ExpertStats

    out: dict[str, float] = {}
    for dtype in (torch.float32, torch.float64):
        st = ExpertStats(8, 128, sample_rate=1.0, max_sample_per_update=268)
        parts = [torch.randn(268, 128, dtype=dtype) for _ in range(8)]
        out[f"ExpertStats.update, 8 x 128 units, 268 rows, {str(dtype).removeprefix('torch.')}"] = (
            per_call_us(lambda st=st, parts=parts: st.update(parts))
        )
    return out


def main() -> None:
    torch.set_num_threads(1)
    results: dict[str, float] = {}
    results.update(small_ops())
    results["row_hash of 4096 rows"] = row_hash_cost()
    results.update(dtype_lookups())
    results.update(transposing_copy())
    results.update(temporaries())
    results.update(int_conversion())
    fp, n_tensors = fingerprint_cost()
    results[f"fingerprint of an MMoE ({n_tensors} tensors)"] = fp
    results.update(gram_update_us())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        commit = "unknown"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        f"Measured by `bench/small_ops_bench.py` on {when}, git {commit}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, 1 thread, `nice -n 10` on a shared 2-core machine (other jobs running: "
        "read the numbers as orders of magnitude)."
    )
    OUT.mkdir(exist_ok=True)
    (OUT / "small_ops.json").write_text(json.dumps({"when": when, "commit": commit, "us": results}, indent=2))
    lines = [f"- {k}: {v:,.1f} µs" for k, v in results.items()]
    print(head, *lines, sep="\n")


if __name__ == "__main__":
    main()
