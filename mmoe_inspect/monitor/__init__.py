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

Lightning (not a dependency): call ``mon.step(epoch=trainer.current_epoch, loss=...)`` from a
callback's ``on_train_batch_end`` and open/close the monitor in ``on_fit_start`` / ``on_fit_end``.
"""

from mmoe_inspect.monitor.log import collapse_timeline, read_run_log
from mmoe_inspect.monitor.monitor import GateMonitor

__all__ = ["GateMonitor", "collapse_timeline", "read_run_log"]
