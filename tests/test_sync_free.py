"""The recording hot path (hooks + statistics updates) makes no host-device sync on the accelerator path.

A `TorchFunctionMode` logs every call of a host-sync op (``Tensor.item``, ``tolist``, ``__bool__``,
``cpu``, ``numpy``, ``__int__``, ``__float__``, ...) made while a recording pass runs. On CPU these
would be cheap host reads; on a GPU each one waits for the device, so the accelerator path
(``sync_free=True``, the default off CPU) must make none.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from mmoe_inspect.analysis.tables import gate_groups
from mmoe_inspect.binding import task_predictions
from mmoe_inspect.models import PLE, MMoE
from mmoe_inspect.recording.recorder import GateRecorder
from mmoe_inspect.stats import ExpertStats, GateStats, PairwiseRoutingStats, update_gates
from mmoe_inspect.stats.outputs import TaskOutputStats
from mmoe_inspect.topology.spec import TaskSpec

SYNC_OPS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.__len__,
    torch.nonzero,
    torch.Tensor.nonzero,
    torch.equal,
    torch.Tensor.equal,
}


class SyncLog(TorchFunctionMode):
    """Records the name of every host-sync op called while active (and still runs it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in SYNC_OPS:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def recording_pass(model: torch.nn.Module, n_batches: int = 3, batch: int = 512) -> list[str]:
    """Run what `inspect()` does per batch (hooks, every statistic) on the sync-free path; return sync calls."""
    topo = model.topology()
    binary = [t for t in topo.tasks if t.kind == "binary"]
    gate_stats = {
        g.name: GateStats(
            g.n_experts, label_names=[t.name for t in binary], reservoir_size=64, sync_free=True
        )
        for g in topo.gates
    }
    groups = gate_groups(topo)
    pairs = [PairwiseRoutingStats([g.name for g in grp], grp[0].n_experts, sync_free=True) for grp in groups]
    outputs = TaskOutputStats([t.kind for t in topo.tasks], sync_free=True)
    expert_names = [e.name for e in topo.experts if e.module is not None]
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch, 16, generator=gen) for _ in range(n_batches)]
    labels = [(torch.rand(batch, len(topo.tasks), generator=gen) < 0.3).double() for _ in range(n_batches)]
    xs[1][5, 0] = float("nan")  # a non-finite row: the masked path must not sync either
    experts: ExpertStats | None = None
    log = SyncLog()
    with GateRecorder(model, topo, experts=True) as rec, torch.inference_mode():
        caps = []
        for x in xs:  # shapes known up front, as on a device where dims come from the topology
            model(x)
            caps.append(rec.take())
        dims = [caps[0].experts[n].shape[1] for n in expert_names]
        experts = ExpertStats(len(dims), dims, sample_rate=0.3, max_sample_per_update=batch, sync_free=True)
        with log:
            for i, x in enumerate(xs):
                out = model(x)
                cap = rec.take()
                row_index = torch.arange(i * batch, (i + 1) * batch)
                lab_bin = labels[i][:, [topo.tasks.index(t) for t in binary]]
                update_gates(gate_stats, cap.gates, lab_bin, row_index, pairwise=pairs)  # as inspect()
                experts.update([cap.experts[n] for n in expert_names], row_index)
                outputs.update(task_predictions(out, topo.tasks), labels[i])
    # the pass did its work: every row counted, the non-finite row excluded, experts sampled
    for st in gate_stats.values():
        s = st.compute()
        assert s.n + s.nonfinite_rows == n_batches * batch and s.nonfinite_rows >= 1
    assert experts.compute().n_sampled > 0
    return log.calls


@pytest.mark.parametrize("kind", ["mmoe", "ple"])
def test_recording_pass_makes_no_host_sync(kind: str) -> None:
    tasks = [TaskSpec("click", "binary"), TaskSpec("watch", "regression")]
    if kind == "mmoe":
        model = MMoE(16, tasks, n_experts=4, expert_hidden=(8,), tower_hidden=(4,))
    else:
        model = PLE(16, tasks, n_levels=2, n_experts=2, n_specific=1, expert_hidden=(8,), tower_hidden=(4,))
    assert recording_pass(model.eval()) == []


def test_sync_log_sees_host_syncs() -> None:
    """The detector itself: each listed op is caught when called inside the mode."""
    t = torch.tensor([1.5, 2.0])
    with SyncLog() as log:
        t[0].item()
        float(t[0])
        int(t[1])
        bool(t[0] > 0)
        t.tolist()
        t.cpu()
        t.numpy()
    assert log.calls == ["item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy"]
