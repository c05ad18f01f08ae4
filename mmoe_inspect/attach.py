"""The analyses that run after an inspection's recording pass, on the same binding: feature attributions
and causal analyses. Each attaches its result to the `InspectionResult`, or the reason it did not run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from mmoe_inspect.attribution.options import AttributionOptions
from mmoe_inspect.binding import Binding
from mmoe_inspect.causal.options import CausalOptions
from mmoe_inspect.progress import Progress, Stage, as_progress
from mmoe_inspect.results import InspectionResult

if TYPE_CHECKING:
    from mmoe_inspect.causal._engine import Collector
    from mmoe_inspect.inspector import InspectConfig

__all__ = ["CausalAnalyses", "run_attributions", "run_causal_analyses"]


def run_attributions(
    result: InspectionResult,
    model: nn.Module,
    binding: Binding,
    options: AttributionOptions,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> None:
    """Attach `result.attribution`, or the reason it is absent (`result.skipped["attribution"]`) when
    the model's inputs cannot be attributed."""
    from mmoe_inspect.attribution import AttributionError, run_attribution

    stage = Stage(as_progress(progress), "attributions (gates, experts, tasks)", None, unit="targets")
    kwargs = {"seed": seed, **options.extra}
    try:
        result.attribution = run_attribution(
            model,
            binding.source,
            topology=binding.topology,
            input_fn=binding.input_fn,
            features=kwargs.pop(
                "features", list(binding.feature_columns) if binding.feature_columns else None
            ),
            budget_seconds=options.budget_seconds,
            sample_rows=options.sample_rows,
            progress=stage,  # run_attribution ticks (done, total)
            **kwargs,
        )
    except AttributionError as exc:  # the inputs cannot be attributed: keep the inspection, say why
        result.skipped["attribution"] = f"the model's inputs could not be attributed ({exc})"
    finally:
        stage.finish()


class CausalAnalyses:
    """The causal analyses of one inspection: planned before its recording pass, so that their data pass can
    ride along it (`rider`), and attached to the result after it (`attach`). A context manager: the
    evaluation's spill folder is removed on exit, also when the recording pass fails."""

    def __init__(
        self,
        model: nn.Module,
        binding: Binding,
        options: CausalOptions,
        cfg: InspectConfig,
        *,
        progress: Progress | None = None,
        label: str = "the model",
    ) -> None:
        from mmoe_inspect.causal import InterventionError
        from mmoe_inspect.causal.run import CausalPlan

        self.options = options
        self.plan: CausalPlan | None = None
        self.skipped: str | None = None
        if not binding.labelled:
            self.skipped = (
                "the data has no label column for any task (the causal analyses measure task metrics on labelled "
                "rows; name label columns with labels={task: column}, on the command line --labels task=column)"
            )
            return
        limits = [n for n in (cfg.max_rows, options.max_rows) if n is not None]
        kwargs: dict[str, Any] = {"batch_size": cfg.batch_size, "seed": cfg.seed, **options.extra}
        try:
            self.plan = CausalPlan.of(
                model,
                binding.source,
                quiet_prepass=True,
                topology=binding.topology,
                input_fn=binding.input_fn,
                columns=list(binding.feature_columns) if binding.feature_columns is not None else None,
                labels=binding.label_columns,
                baselines=options.baselines,
                segment_by=options.segment_by,
                n_boot=options.n_boot,
                intervals=options.intervals,
                max_rows=min(limits) if limits else None,
                sample=cfg.sample,
                progress=as_progress(progress),
                stage=f"causal analyses of {label}",
                **kwargs,
            )
        except InterventionError as exc:
            self.skipped = f"the gates of this model cannot be intervened on ({exc})"

    def rider(self, example: Callable[[], Any]) -> Collector | None:
        """The causal data pass as a `Collector` for the recording pass to feed (see `CausalPlan.rider`;
        `example()` gives a first-batch model input for its check), or None: then `attach` runs a pass of
        its own."""
        if self.plan is None:
            return None
        return self.plan.rider(example)

    def attach(self, result: InspectionResult, rider: Collector | None = None) -> None:
        """Attach `result.causal` (from `rider`'s rows, or from a data pass of its own), or the reason it is
        absent (`result.skipped["causal"]`)."""
        from mmoe_inspect.causal import InterventionError

        if self.plan is None:
            result.skipped["causal"] = self.skipped or "the causal analyses were not planned"
            return
        try:
            causal = self.plan.finish(rider.finish() if rider is not None else self.plan.collect())
        except InterventionError as exc:
            result.skipped["causal"] = f"the gates of this model cannot be intervened on ({exc})"
            return
        result.attach_causal(causal)  # a collapsed gate's severity follows its measured impact
        if self.options.segment_by is not None:
            causal.meta.setdefault("segment_by", self.options.segment_by)

    def close(self) -> None:
        if self.plan is not None:
            self.plan.close()

    def __enter__(self) -> CausalAnalyses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_causal_analyses(
    result: InspectionResult,
    model: nn.Module,
    binding: Binding,
    options: CausalOptions,
    cfg: InspectConfig,
    *,
    progress: Progress | None = None,
    label: str = "the model",
) -> None:
    """Attach `result.causal` on the rows the inspection read (its `sample`, at most `options.max_rows`),
    with a data pass of its own, or the reason it is absent (`result.skipped["causal"]`)."""
    with CausalAnalyses(model, binding, options, cfg, progress=progress, label=label) as analyses:
        analyses.attach(result)
