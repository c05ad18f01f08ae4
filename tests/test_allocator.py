"""`mmoe_inspect.allocator.tune_allocator`: glibc's malloc thresholds, opt-in for the library, set by the CLI.

Every call that could tune runs in a child process: the setting is process-wide and permanent, and the
suite's own process must keep glibc's defaults. The effect is read back from glibc itself
(`mallinfo2().hblks`: the blocks served by `mmap`), and, on the big bench model, from the page faults
per batch of a recording pass run beside a plain forward (`ru_minflt`, counted by the kernel).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from typing import Any

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")

# One 16 MiB block from libc's malloc: above glibc's default mmap threshold (128 KiB, raised only by
# freeing such blocks), so served by mmap (hblks + 1) unless the threshold is fixed higher.
_PROBE = """
import ctypes, json
libc = ctypes.CDLL(None)
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
def mmapped_blocks_for_16_mib():
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblks
    p = libc.malloc(16 << 20)
    during = libc.mallinfo2().hblks
    libc.free(p)
    return during - before
"""


def child(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `code` (which prints one JSON line last) in a fresh Python with this suite's import path."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MMOE_INSPECT_ALLOCATOR", "GLIBC_TUNABLES")}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


TUNE = (
    _PROBE
    + """
from mmoe_inspect.allocator import tune_allocator, MMAP_THRESHOLD, TRIM_THRESHOLD
first = tune_allocator()
second = tune_allocator()
print(json.dumps({"first": first.__dict__, "same": second is first, "mmapped": mmapped_blocks_for_16_mib(),
                  "values": [MMAP_THRESHOLD, TRIM_THRESHOLD]}))
"""
)


@needs_glibc
def test_tunes_glibc_once_and_the_heap_then_serves_large_blocks() -> None:
    r = child(TUNE)
    assert r["first"]["applied"] is True
    assert [r["first"]["mmap_threshold"], r["first"]["trim_threshold"]] == r["values"]
    assert "mmap threshold" in r["first"]["reason"]
    assert r["same"] is True  # idempotent: the second call returns the first call's result
    assert r["mmapped"] == 0  # 16 MiB came from the heap


@needs_glibc
@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"MMOE_INSPECT_ALLOCATOR": "system"}, "MMOE_INSPECT_ALLOCATOR=system"),
        ({"MMOE_INSPECT_ALLOCATOR": " System "}, "MMOE_INSPECT_ALLOCATOR=system"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000000"}, "GLIBC_TUNABLES"),
        ({"MALLOC_TRIM_THRESHOLD_": "1000000000"}, "MALLOC_TRIM_THRESHOLD_"),
    ],
)
def test_the_users_choice_leaves_glibc_as_it_is(env: dict[str, str], says: str) -> None:
    r = child(TUNE, env)
    assert r["first"]["applied"] is False
    assert says in r["first"]["reason"]
    assert r["first"]["mmap_threshold"] is None and r["first"]["trim_threshold"] is None
    assert r["mmapped"] == 1  # glibc's own thresholds still in force: 16 MiB was mmapped


def test_elsewhere_than_glibc_it_does_nothing_and_says_so() -> None:
    """Simulated in a child: `sys.platform` set to another system before the call (never raises)."""
    r = child(
        """
        import json, sys
        sys.platform = "darwin"
        from mmoe_inspect.allocator import tune_allocator
        t = tune_allocator()
        print(json.dumps(t.__dict__))
        """
    )
    assert r["applied"] is False
    assert r["reason"] == "not glibc (darwin): nothing to tune"


@needs_glibc
@pytest.mark.parametrize("opt_out", [False, True])
def test_the_cli_tunes_its_own_process_at_its_start(opt_out: bool) -> None:
    r = child(
        """
        import json, sys
        import mmoe_inspect.allocator as allocator
        import mmoe_inspect.cli.main as cli_main
        before = allocator._done
        sys.argv = ["mmoe-inspect", "--help"]
        try:
            cli_main.main()
        except SystemExit as e:
            code = e.code
        print(json.dumps({"before": before is not None, "after": allocator._done is not None, "code": code,
                          "torch_first": "torch" in sys.modules}))
        """,
        {"MMOE_INSPECT_ALLOCATOR": "system"} if opt_out else None,
    )
    assert r["code"] == 0 and r["before"] is False
    assert r["after"] is (not opt_out)


_FAULTS = """
import json, copy, resource, statistics, sys
from mmoe_inspect.allocator import tune_allocator
tuned = tune_allocator().applied if sys.argv[1] == "tuned" else False
import torch
torch.set_num_threads(1)
from mmoe_inspect import TaskSpec
from mmoe_inspect.models import MMoE
from mmoe_inspect.routing_pass import RoutingPass, RoutingStats

torch.manual_seed(0)
model = MMoE(128, [TaskSpec(n, "binary") for n in "abc"], n_experts=8, expert_hidden=(256, 128),
             tower_hidden=(32,)).eval()
plain = copy.deepcopy(model)
topo = model.topology()
stats = RoutingStats(topo, labelled=topo.tasks, outputs=True, expert_rate=1 / 64, seed=0,
                     max_expert_rows_per_update=5 * 4096, background=True)
x = torch.randn(4096, 128)
labels = (torch.rand(4096, 3) < 0.2).double()
per_batch = []
with torch.inference_mode(), RoutingPass(model, stats, experts=True) as rp:
    for rep in range(6):
        for _ in range(4):
            plain(x)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            rp.step(x, labels=labels)
        stats.feed.wait()
        per_batch.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 4)
    stats.flush()
print(json.dumps({"tuned": tuned, "faults": statistics.median(per_batch[2:])}))
"""


@needs_glibc
@pytest.mark.slow
def test_tuning_removes_the_recording_pass_page_faults() -> None:
    """The big bench model (8 experts [256, 128], 4,096-row batches), statistics in the worker thread,
    each chunk of 4 recording steps after 4 plain forwards of a copy (as `bench/scale_bench.py` times
    them): glibc's defaults give back the freed temporaries and fault them in again, 1,300-3,700 minor
    faults a batch in four runs (median of the last four chunks); tuned, 27-75. The bound between: 500."""
    untuned = child(_FAULTS.replace("sys.argv[1]", "'system'"))
    tuned = child(_FAULTS.replace("sys.argv[1]", "'tuned'"))
    assert tuned["tuned"] is True
    assert untuned["faults"] > 500, untuned
    assert tuned["faults"] < 500, tuned


@needs_glibc
@pytest.mark.parametrize(
    ("choice", "applied", "says"), [("cli", True, "tuned as"), ("system", False, "`--allocator system`")]
)
def test_the_scale_bench_runs_as_the_cli_unless_told_and_says_which(
    choice: str, applied: bool, says: str
) -> None:
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    r = child(
        f"""
        import json, os, sys
        sys.path.insert(0, {bench!r})
        import scale_bench
        a = scale_bench.setup_allocator({choice!r})
        print(json.dumps({{"a": a, "line": scale_bench.allocator_line(a),
                          "env": os.environ.get("MMOE_INSPECT_ALLOCATOR")}}))
        """
    )
    assert r["a"]["applied"] is applied
    assert says in r["line"]
    assert r["env"] == ("system" if choice == "system" else None)  # the report part's children inherit it
