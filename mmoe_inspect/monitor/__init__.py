"""Gate health during training: `GateMonitor` (hooks + windowed statistics + on-the-fly findings),
its run log (JSONL or parquet) and readers for the report's training section.

Plain PyTorch, any loop::

    from mmoe_inspect.monitor import GateMonitor

    with GateMonitor(model, every=50, log_path="run.jsonl", on_finding=stop_if_critical) as mon:
        for epoch in range(n_epochs):
            for x, y in loader:
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step(epoch=epoch, loss=loss.item(), lr=opt.param_groups[0]["lr"])

Lightning (``pip install "mmoe-inspect[lightning]"``): ``GateMonitorCallback`` in
`mmoe_inspect.monitor.lightning`. TensorBoard (``pip install "mmoe-inspect[tensorboard]"``):
``GateMonitor(..., tensorboard="runs/x")`` or a writer; tags in `mmoe_inspect.monitor.tensorboard`.
"""

from mmoe_inspect.monitor.log import RunLogError, collapse_timeline, fit_to_model, load_run_log, read_run_log
from mmoe_inspect.monitor.monitor import GateMonitor

__all__ = [
    "GateMonitor",
    "RunLogError",
    "collapse_timeline",
    "fit_to_model",
    "load_run_log",
    "read_run_log",
]  # + GateMonitorCallback, loaded on use


def __getattr__(name: str) -> object:
    """`GateMonitorCallback` on first use: Lightning is imported only by those who ask for it."""
    if name == "GateMonitorCallback":
        from mmoe_inspect.monitor.lightning import GateMonitorCallback

        return GateMonitorCallback
    raise AttributeError(f"module 'mmoe_inspect.monitor' has no attribute {name!r}")
