"""`GateMonitorCallback`: a `GateMonitor` driven by a PyTorch Lightning ``Trainer`` (optional dependency).

    import lightning as L
    from mmoe_inspect.monitor.lightning import GateMonitorCallback

    cb = GateMonitorCallback(every=50, log_path="run_log.jsonl", stop_on=("collapsed_gate",))
    L.Trainer(max_epochs=3, callbacks=[cb]).fit(module, train_loader, val_loader)
    cb.first_seen   # {(code, subject): step}

The monitor is opened in ``on_train_start`` (after Lightning has moved the model to its device and
restored a checkpoint, so a resumed run continues its step count) and closed in ``on_fit_end``, in
``on_exception`` (also Ctrl-C) and in ``teardown``: no hook outlives ``fit``. One monitor step per
optimizer step, numbered by ``trainer.global_step`` (with ``accumulate_grad_batches=k`` a step holds
the forwards of k batches). Validation and sanity-check forwards run in eval mode and are not
counted. Scalars: ``loss`` (the mean over the step's batches of the ``loss`` that ``training_step``
returned, as Lightning hands it to callbacks) and ``lr`` (``lr_<i>_<j>`` for optimizer i, param group
j when there are several). Under DDP every rank hooks its replica and the window statistics cover
the batches of all ranks (the statistics are torchmetrics metrics: ``compute()`` sums their states
over the process group, every rank closing its window at the same step); only global rank 0 writes
the run log and TensorBoard; a stop requested on any rank stops all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmoe_inspect.analysis.codes import check_codes
from mmoe_inspect.analysis.findings import Finding, Thresholds
from mmoe_inspect.monitor.monitor import GateMonitor
from mmoe_inspect.topology.spec import Topology

INSTALL_HINT = 'GateMonitorCallback needs PyTorch Lightning: pip install "mmoe-inspect[lightning]"'

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError as err:  # pragma: no cover - exercised by a test that hides lightning
    raise ImportError(INSTALL_HINT) from err

__all__ = ["GateMonitorCallback"]


class GateMonitorCallback(Callback):
    """Watch the gates of the model a ``LightningModule`` trains; a run log row per gate per window.

    `module`: the attribute path (``"model"``, ``"net.mmoe"``) of the MoE model inside the
    LightningModule; default: the LightningModule itself if it declares ``topology()``, else its
    first submodule that does. `topology`: a `Topology` or spec path for that model (then `module`
    defaults to the LightningModule). `every`, `log_path`, `thresholds`, `stride`: as `GateMonitor`.
    `on_finding(finding, step)`: called when a finding first appears; a truthy return stops the run
    (``trainer.should_stop``). `stop_on`: finding codes or severities (``"collapsed_gate"``,
    ``"critical"``) that stop the run. `tensorboard`: True (default) writes to the trainer's
    ``TensorBoardLogger`` when it has one; False never; a directory or a writer: that one.
    After ``fit``: `monitor` (the last `GateMonitor`), `rows`, `first_seen`, and `stopped_by`
    (``(finding, step)`` that stopped the run, or None).
    """

    def __init__(
        self,
        *,
        module: str | None = None,
        topology: Topology | str | Path | None = None,
        every: int = 50,
        log_path: str | Path | None = None,
        thresholds: Thresholds | None = None,
        on_finding: Callable[[Finding, int], Any] | None = None,
        stop_on: Collection[str] = (),
        stride: int = 1,
        tensorboard: bool | str | Path | Any = True,
    ) -> None:
        super().__init__()
        if isinstance(stop_on, str):
            stop_on = (stop_on,)
        GateMonitor._check_window(every, stride)
        check_codes(stop_on, "GateMonitorCallback(stop_on=...)", severities=True)  # a typo never stops
        self.module = module
        self.topology = topology
        self.every = every
        self.log_path = log_path
        self.thresholds = thresholds
        self.on_finding = on_finding
        self.stop_on = frozenset(stop_on)
        self.stride = stride
        self.tensorboard = tensorboard
        self.monitor: GateMonitor | None = None
        self.stopped_by: tuple[Finding, int] | None = None
        self._last_step = -1
        self._losses: list[float] = []
        self._stop = False

    # ------------------------------------------------------------------ results
    @property
    def rows(self) -> list[dict[str, Any]]:
        return [] if self.monitor is None else self.monitor.rows

    @property
    def first_seen(self) -> dict[tuple[str, str], int]:
        return {} if self.monitor is None else self.monitor.first_seen

    # -------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()
        self.stopped_by = None
        self._stop = False
        self._last_step = trainer.global_step
        writes = trainer.is_global_zero
        self._losses = []
        self.monitor = GateMonitor(
            self._watched(pl_module),
            self.topology,
            every=self.every,
            log_path=self.log_path if writes else None,
            thresholds=self.thresholds,
            on_finding=self._found,
            start_step=trainer.global_step,
            stride=self.stride,
            tensorboard=self._writer(trainer) if writes else None,
        ).open()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is None:
            return
        loss = _loss(outputs)
        if loss is not None:
            self._losses.append(loss)
        if trainer.global_step == self._last_step:  # accumulating gradients: same optimizer step
            return
        self._last_step = trainer.global_step
        scalars = _learning_rates(trainer)
        if self._losses:
            scalars["loss"] = sum(self._losses) / len(self._losses)
            self._losses = []
        window = self.monitor.step(epoch=trainer.current_epoch, global_step=trainer.global_step, **scalars)
        if window is not None:  # every rank closes its window at the same step
            stop = self._stop
            if trainer.world_size > 1:
                stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                trainer.should_stop = True

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Under DDP the other ranks may not get here: no collective statistics sync, just unhook.
        if self.monitor is not None:
            self.monitor.close(log_partial=trainer.world_size == 1)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._close()

    # ---------------------------------------------------------------- internals
    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def _found(self, finding: Finding, step: int) -> None:
        stop = finding.code in self.stop_on or finding.severity in self.stop_on
        if self.on_finding is not None and self.on_finding(finding, step):
            stop = True
        if stop:
            self._stop = True
            if self.stopped_by is None:
                self.stopped_by = (finding, step)

    def _watched(self, pl_module: LightningModule) -> nn.Module:
        """The model whose gates are monitored (see `module`)."""
        if self.module is not None:
            return pl_module.get_submodule(self.module)
        if self.topology is not None or _declares_topology(pl_module):
            return pl_module
        for _name, sub in pl_module.named_modules():
            if _declares_topology(sub):
                return sub
        raise ValueError(
            "GateMonitorCallback: no submodule declares topology(); pass module='attribute.path' of "
            "the MoE model and/or topology= (a Topology or spec file)"
        )

    def _writer(self, trainer: Trainer) -> Any:
        if self.tensorboard is False or self.tensorboard is None:
            return None
        if self.tensorboard is not True:
            return self.tensorboard
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None


def _declares_topology(module: nn.Module) -> bool:
    return callable(getattr(module, "topology", None))


def _loss(outputs: Any) -> float | None:
    """The ``loss`` of a ``training_step`` output (a tensor, or a mapping holding ``"loss"``)."""
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
        return float(outputs.detach())
    if isinstance(outputs, (int, float)):
        return float(outputs)
    return None


def _learning_rates(trainer: Trainer) -> dict[str, float]:
    """``{"lr": ...}`` for one optimizer with one param group, else ``{"lr_<i>_<j>": ...}``."""
    groups = [(i, j, g) for i, opt in enumerate(trainer.optimizers) for j, g in enumerate(opt.param_groups)]
    if len(groups) == 1:
        return {"lr": float(groups[0][2]["lr"])}
    return {f"lr_{i}_{j}": float(g["lr"]) for i, j, g in groups}
