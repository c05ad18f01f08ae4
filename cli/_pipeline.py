"""What the commands share after option parsing: load a checkpoint, inspect it with progress bars, and run
the causal analyses with baselines loaded the same way. Thin glue over the library's public API.

`inspect_checkpoint` does what `LoadedModel.inspect` does (adapter input function, task names and
kinds, labels, the adapter's session) plus the two things that method does not pass on: the
`progress` callback of `mmoe_inspect.inspect` and the causal options.

`distributed_run` makes a command one rank of a torchrun job (see `mmoe_inspect.distributed`): every
rank records its shard, rank 0 alone runs the causal analyses and attributions and writes; the other
ranks print nothing and exit 0, and an error on any rank ends every rank (rank 0 prints it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from ._common import EXIT_NEEDS_INPUT, LoadOptions, OptionError, RunOptions, err, out

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress

    from mmoe_inspect.data.sources import TableSource
    from mmoe_inspect.distributed import DistContext
    from mmoe_inspect.loading import LoadedModel
    from mmoe_inspect.results import InspectionResult

CAUSAL_MAX_ROWS = 200_000  # rows the causal analyses evaluate (per-row predictions are kept in memory)
ATTRIBUTION_BUDGET_S = 30.0  # default --attribution-budget (seconds)
ATTRIBUTION_ROWS = 256  # default --attribution-rows


# ----------------------------------------------------------------------------- progress
class Passes:
    """Rich progress bars on stderr, one per stage or pass over the data, updated once per batch (never per
    row): done/total, rate (rows/s, or the stage's unit), elapsed time and ETA.

    Disabled with --quiet; on a non-terminal stderr (CI logs, tests) no bar is drawn, and each finished
    stage prints one line instead (what it did, how long it took, at what rate): a CI log shows where
    the time went.
    """

    def __init__(self, quiet: bool, console: Console | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        target = console if console is not None else err
        self.quiet = quiet
        self.console = target
        self.progress: Progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            _rate_column(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=target,
            transient=True,
            disable=quiet or not target.is_terminal,  # CI logs and pipes get no bar (and no stray lines)
        )

    def __enter__(self) -> Passes:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def bar(self, label: str, total: int | None, unit: str = "rows") -> Callable[..., None]:
        """A new bar; the returned callback takes the units (rows) done so far, and the total once known."""
        task = self.progress.add_task(label, total=total, unit=unit)

        def tick(done: int, total: int | None = None) -> None:
            if total is None:
                self.progress.update(task, completed=done)
            else:
                self.progress.update(task, completed=done, total=total)

        return tick

    def finish(self, label: str) -> None:
        """Mark the bar `label` complete at what it actually saw (totals are estimates when sampling) and
        print its one-line summary (not with --quiet)."""
        for task in self.progress.tasks:
            if task.description == label:
                self.progress.update(task.id, total=task.completed)
                if not self.quiet:
                    self.console.print(stage_line(label, task.completed, task.elapsed, task.fields["unit"]))


def stage_line(label: str, done: float, seconds: float | None, unit: str) -> str:
    """`"  inspecting mmoe.pt: 20,000 rows in 1.2 s (16,667 rows/s)"`: one finished stage, markup-free."""
    seconds = seconds or 0.0
    per_s = done / seconds if seconds > 0 else 0.0
    rate = f" ({per_s:,.0f} {unit}/s)" if per_s >= 10 else (f" ({per_s:.2g} {unit}/s)" if per_s > 0 else "")
    return escape(f"  {label}: {done:,.0f} {unit} in {seconds:.1f} s{rate}")


@functools.cache
def _rate_column_class() -> type:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Units per second of a bar (rich's own speed column counts bytes)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            unit = task.fields.get("unit", "rows")
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")

    return RateColumn


def _rate_column() -> Any:
    return _rate_column_class()()


def expected_rows(source: TableSource, sample: float | None, limit: int | None) -> int | None:
    """Rows a pass will read (an estimate when sampling; None when unknown, e.g. CSV: `limit` is only a cap)."""
    n = source.n_rows()
    if n is None:
        return None
    if sample is not None:
        n = round(n * sample)
    return min(n, limit) if limit is not None else n


@functools.cache
def _pass_source_class() -> type:
    from mmoe_inspect.data.sources import TableSource

    @dataclass
    class PassSource(TableSource):
        """A `TableSource` whose every pass shows a progress bar and reads the `--sample` rows."""

        passes: Passes | None = None
        label: str = ""
        pass_sample: float | None = None
        pass_seed: int = 0
        count: int = 0

        def iter_frames(
            self,
            batch_size: int,
            columns: Sequence[str] | None = None,
            max_rows: int | None = None,
            *,
            sample: float | None = None,
            seed: int = 0,
            **options: Any,
        ) -> Iterator[pd.DataFrame]:
            if sample is None and self.pass_sample is not None:
                sample, seed = self.pass_sample, self.pass_seed
            if self.passes is None:
                yield from super().iter_frames(
                    batch_size, columns, max_rows, sample=sample, seed=seed, **options
                )
                return
            self.count += 1
            name = f"{self.label} (pass {self.count})"
            tick = self.passes.bar(name, expected_rows(self, sample, max_rows))
            done = 0
            for chunk in super().iter_frames(
                batch_size, columns, max_rows, sample=sample, seed=seed, **options
            ):
                yield chunk
                done += len(chunk)
                tick(done)
            self.passes.finish(name)

    return PassSource


def pass_source(
    source: TableSource, passes: Passes, label: str, sample: float | None, seed: int
) -> TableSource:
    """`source`, but every pass over it (`iter_frames`) shows a progress bar and reads the `--sample` rows:
    for the causal analyses, whose passes run inside the library, on the same rows as the inspection."""
    cls = _pass_source_class()
    return cls(
        frame=source.frame, path=source.path, passes=passes, label=label, pass_sample=sample, pass_seed=seed
    )


# ----------------------------------------------------------------------------- distributed runs
@contextmanager
def distributed_run(
    wanted: bool | None, load: LoadOptions, timeout_s: float | None = None
) -> Iterator[tuple[DistContext | None, LoadOptions]]:
    """`(context, load options)` of this process: `(None, load)` for a single-process run, else this rank's.

    `wanted` None means "when launched by torchrun with several processes". A CUDA `--device`
    without an index becomes `cuda:LOCAL_RANK` (one GPU per rank). Ranks other than 0 print nothing
    (their consoles stay quiet until the process ends: rank 0 prints every rank's error). An error
    raised inside reaches every rank; the process group is destroyed on the way out.
    """
    from mmoe_inspect.distributed import (
        DistributedError,
        agreed_errors,
        init_from_env,
        launched_by_torchrun,
        shutdown,
    )

    if not (launched_by_torchrun() if wanted is None else wanted):
        yield None, load
        return
    import os

    import torch

    device = torch.device(load.device) if _is_device(load.device) else None
    if device is not None and device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"--device {load.device}: CUDA is not available on this machine")
        if device.index is None:
            load = replace(load, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    try:
        ctx = init_from_env(load.device if device is not None else "cpu", timeout_s)
    except DistributedError as exc:
        raise OptionError(str(exc)) from None
    if not ctx.is_main:
        out.quiet = err.quiet = True
    try:
        with agreed_errors(ctx):
            yield ctx, load
    finally:
        shutdown(ctx)


def _is_device(text: str) -> bool:
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        return False  # the loader reports a bad --device with its own one-line error
    return True


# ----------------------------------------------------------------------------- inspection
@dataclass(frozen=True)
class CausalRequest:
    """What `report` asks of the causal analyses (None in place of it: they do not run)."""

    baselines: Mapping[str, Path] = field(default_factory=dict)
    segment_by: str | None = None
    n_boot: int = 200
    intervals: str = "analytic"


def parse_baselines(values: Sequence[str] | None) -> dict[str, Path]:
    """`["sb=sb.pt", "single=single.pt"]` → `{"sb": Path("sb.pt"), ...}` (names unique, files exist)."""
    out: dict[str, Path] = {}
    for value in values or ():
        name, sep, path = (p.strip() for p in value.partition("="))
        if not sep or not name or not path:
            raise OptionError(f"--baseline {value!r} must look like NAME=PATH")
        if name in out:
            raise OptionError(f"--baseline names {name!r} twice")
        if name in ("label", "model", "row") or ":" in name:
            raise OptionError(f"--baseline name {name!r} is reserved; pick another name")
        p = Path(path).expanduser().absolute()
        if not p.is_file():
            raise OptionError(f"--baseline {name}: {p} does not exist")
        out[name] = p
    return out


@dataclass(frozen=True)
class AttributionRequest:
    """What `report` asks of the feature attributions (None in place of it: they do not run)."""

    budget_seconds: float = ATTRIBUTION_BUDGET_S
    sample_rows: int = ATTRIBUTION_ROWS

    def options(self) -> dict[str, Any]:
        """The `attribution=` options of `mmoe_inspect.inspect`."""
        return {"budget_seconds": self.budget_seconds, "sample_rows": self.sample_rows}


def read_run(path: Path) -> pd.DataFrame:
    """A `GateMonitor` run log (`--run`): one row per gate per window; any problem is an `OptionError`."""
    from mmoe_inspect.monitor import read_run_log

    if not path.is_file():
        raise OptionError(
            f"--run {path}: no such file (a run log written by GateMonitor, .jsonl or .parquet)"
        )
    try:
        frame = read_run_log(path)
        if not frame.empty:
            from mmoe_inspect.monitor._check import check_run_log

            check_run_log(frame)  # what the Training section draws, checked before the long pass
    except Exception as exc:  # bad suffix, bad JSON, unreadable parquet, columns the report cannot draw
        raise OptionError(
            f"--run {path.name}: not a readable run log ({type(exc).__name__}: {exc})"
        ) from None
    missing = [c for c in ("step", "gate") if c not in frame.columns]
    if frame.empty or missing:
        what = "is empty" if frame.empty else f"lacks the column(s) {', '.join(missing)}"
        raise OptionError(f"--run {path.name}: {what}; expected a GateMonitor run log")
    return frame


def check_stored_rows(loaded: LoadedModel, load: LoadOptions, spec: Path | None) -> None:
    """Our checkpoint without stored rows and no --data: say what is known, then exit 2."""
    if load.data is None and loaded.eval_frame is None and loaded.checkpoint is not None:
        from mmoe_inspect.inspector import resolve_topology

        topo = resolve_topology(loaded.model, spec)
        err.print(f"model {type(loaded.model).__name__}\n{topo.describe()}", markup=False)
        err.print("[red]error:[/red] this checkpoint stores no evaluation rows: pass --data FILE.parquet")
        raise typer.Exit(EXIT_NEEDS_INPUT)


def inspect_checkpoint(
    checkpoint: Path,
    load: LoadOptions,
    run: RunOptions,
    *,
    spec: Path | None = None,
    causal: CausalRequest | None = None,
    attribution: AttributionRequest | None = None,
    label: str = "",
    dist: DistContext | None = None,
) -> InspectionResult:
    """Load `checkpoint`, inspect it on the data with a progress bar, and (if asked) run the feature
    attributions (`mmoe_inspect.run_attribution`, inside the adapter's session) and the causal analyses.

    The same steps as `LoadedModel.inspect`, plus `progress=` and the causal options the CLI exposes;
    the input columns read are recorded in `result.meta["features"]` for the report. When the model's
    inputs cannot be attributed, the inspection is kept and the reason is in
    `result.meta["attribution_skipped"]` (the report says it). With `dist` (a distributed run) every
    rank records its shard of the rows; the attributions and causal analyses run on rank 0 only.
    """
    import torch

    torch.manual_seed(run.seed)
    loaded = load.load(checkpoint, quiet=run.quiet)
    check_stored_rows(loaded, load, spec)
    source = loaded.source(load.data)
    # how rows feed the model (worked out by trial forwards when no adapter knows it): kept for the
    # features list and the causal pass
    binding = loaded.bind(
        source,
        tasks=load.tasks,
        labels=load.labels,
        input=load.input,  # type: ignore[arg-type]
        features=load.features,
        collate=load.collate,
    )
    if not run.quiet:
        for note in binding.notes:
            err.print(f"note: {escape(note)}")
    fn = binding.input_fn
    what = label or checkpoint.name
    # every rank checks the options; the baselines are loaded where the causal analyses run (rank 0)
    main = dist is None or dist.is_main
    preloaded = check_before_pass(loaded, source, load, run, spec, causal if main else None)
    bar = f"inspecting {what}"
    with Passes(run.quiet) as passes:
        tick = passes.bar(bar, expected_rows(source, load.sample, load.limit))
        result = loaded.inspect(
            source,
            tasks=load.tasks,
            labels=load.labels,
            input=load.input,  # type: ignore[arg-type]
            features=load.features,
            collate=load.collate,
            topology=spec,
            config=load.config(run.seed),
            model_name=f"{type(loaded.model).__name__} ({checkpoint.name})",
            binding=binding,
            progress=tick,
            distributed=dist is not None,
        )
        passes.finish(bar)
    if fn.names:
        result.meta["features"] = list(fn.names)
    if load.data is None:
        result.data_source = f"evaluation rows stored in {checkpoint.name}"
    if dist is not None and not dist.is_main:
        return result  # rank 0 runs what follows, on the same rows a single process would use
    if attribution is not None:
        run_attributions(result, loaded, source, fn, run, attribution)
    if causal is None:
        return result
    run_causal_analyses(result, loaded, source, fn, load, run, causal, what, preloaded)
    return result


def check_before_pass(
    loaded: LoadedModel,
    source: TableSource,
    load: LoadOptions,
    run: RunOptions,
    spec: Path | None,
    causal: CausalRequest | None,
) -> dict[str, LoadedModel]:
    """Everything that can be checked before the long pass over the rows, checked now (one line, exit 2,
    within a second): the spec file parses, the `--labels` columns and the `--segment-by` column exist
    in the data, every `--baseline` checkpoint loads. Returns the loaded baselines (name → model), reused
    by the causal analyses."""
    from mmoe_inspect.data.sources import require_columns
    from mmoe_inspect.loading.inputs import parse_labels

    if spec is not None:
        from mmoe_inspect.inspector import resolve_topology

        resolve_topology(loaded.model, spec)  # a spec that does not parse fails here, not after the pass
    labels = parse_labels(load.labels)
    if labels:
        require_columns(source, list(labels.values()), what="label")
    if causal is None:
        return {}
    if causal.segment_by is not None:
        require_columns(source, [causal.segment_by], what="--segment-by")
    return {name: load.load(path, quiet=run.quiet) for name, path in causal.baselines.items()}


def run_attributions(
    result: InspectionResult,
    loaded: LoadedModel,
    source: TableSource,
    fn: Callable[[pd.DataFrame], Any],
    run: RunOptions,
    attribution: AttributionRequest,
) -> None:
    """Attach `result.attribution` (what `inspect(attribution=...)` does), or the reason it is absent in
    `result.meta["attribution_skipped"]` when the model's inputs cannot be attributed."""
    import mmoe_inspect.attribution as attr

    names = list(getattr(fn, "names", None) or ()) or None
    label = "attributions (gates, experts, tasks)"
    try:
        with Passes(run.quiet) as passes, loaded.adapter.session(loaded.model):
            tick = passes.bar(label, None, unit="targets")
            result.attribution = attr.run_attribution(
                loaded.model,
                source,
                topology=result.topology,
                input_fn=fn,
                features=names,
                seed=run.seed,
                progress=tick,
                **attribution.options(),
            )
            passes.finish(label)
    except attr.AttributionError as exc:  # the inputs cannot be attributed: keep the inspection, say why
        if not run.quiet:
            err.print(f"note: no attributions: {escape(str(exc))}")
        result.meta["attribution_skipped"] = f"the model's inputs could not be attributed ({exc})"


def run_causal_analyses(
    result: InspectionResult,
    loaded: LoadedModel,
    source: TableSource,
    fn: Callable[[pd.DataFrame], Any],
    load: LoadOptions,
    run: RunOptions,
    causal: CausalRequest,
    what: str,
    preloaded: Mapping[str, LoadedModel] | None = None,
) -> None:
    """Attach `result.causal` (or the reason it is absent in `result.meta["causal_skipped"]`);
    `preloaded` holds baselines `check_before_pass` already loaded."""
    from mmoe_inspect.causal import InterventionError, run_causal

    have = set(source.columns())
    labelled = [t for t in result.topology.tasks if t.label_column in have]
    if not labelled:
        result.meta["causal_skipped"] = (
            "the data has no label column for any task (the causal analyses measure task metrics on labelled "
            "rows; name label columns with --labels task=column)"
        )
        return
    columns = list(getattr(fn, "names", None) or ()) or None
    with ExitStack() as stack:
        baselines = {
            name: make_baseline(name, path, load, run, result, stack, source, (preloaded or {}).get(name))
            for name, path in causal.baselines.items()
        }
        passes = stack.enter_context(Passes(run.quiet))
        stack.enter_context(loaded.adapter.session(loaded.model))
        limit = min(load.limit, CAUSAL_MAX_ROWS) if load.limit is not None else CAUSAL_MAX_ROWS
        try:
            causal_result = run_causal(
                loaded.model,
                pass_source(source, passes, f"causal analyses of {what}", load.sample, run.seed),
                topology=result.topology,
                input_fn=fn,
                columns=columns,
                labels={t.name: t.label_column for t in labelled},
                baselines=baselines,
                segment_by=causal.segment_by,
                n_boot=causal.n_boot,
                intervals=causal.intervals,
                seed=run.seed,
                batch_size=load.batch_size,
                max_rows=limit,
            )
        except InterventionError as exc:
            result.meta["causal_skipped"] = f"the gates of this model cannot be intervened on ({exc})"
            if not run.quiet:
                err.print(f"note: no causal analyses: {escape(str(exc))}")
            return
    result.attach_causal(causal_result)  # a collapsed gate's severity follows its measured impact
    if causal.segment_by is not None:
        result.causal.meta.setdefault("segment_by", causal.segment_by)


def make_baseline(
    name: str,
    path: Path,
    load: LoadOptions,
    run: RunOptions,
    result: InspectionResult,
    stack: ExitStack,
    source: TableSource | None = None,
    loaded: LoadedModel | None = None,
) -> Any:
    """Load a baseline checkpoint with the main model's loading options (unless `loaded` already is);
    a `Baseline` for run_causal."""
    from mmoe_inspect.causal import Baseline

    loaded = loaded if loaded is not None else load.load(path, quiet=run.quiet)
    # a library baseline reads rows its library's way; one no adapter knows takes the main model's mapping
    generic = loaded.adapter.name == "generic"
    if generic and source is not None and load.features is None and load.collate is None:
        fn: Any = loaded.bind(source, input=load.input).input_fn  # type: ignore[arg-type]
    else:
        fn = loaded.input_fn(
            input=load.input if generic else None,  # type: ignore[arg-type]
            features=load.features if generic else None,
            collate=load.collate if generic else None,
        )
    declared = getattr(loaded.model, "topology", None)
    tasks: list[str] | None = None
    if callable(declared):
        predicts = list(declared().task_names)
    else:
        tasks = loaded.task_names(load.tasks)
        n = loaded.adapter.n_tasks(loaded.model)
        if tasks is None and n is not None and n <= len(result.topology.tasks):
            tasks = list(result.topology.task_names[:n])
        if tasks is None:
            raise OptionError(
                f"--baseline {name}: cannot tell which tasks {path.name} predicts; save it with task names "
                "or pass --tasks"
            )
        predicts = tasks
    if not set(predicts) & set(result.topology.task_names):
        raise OptionError(
            f"--baseline {name} predicts {predicts}, none of the model's tasks {list(result.topology.task_names)} "
            "(tasks are matched by name)"
        )
    stack.enter_context(loaded.adapter.session(loaded.model))
    return Baseline(loaded.model, input_fn=fn, tasks=tasks)


# ----------------------------------------------------------------------------- writing
def default_out_dir(checkpoint: Path) -> Path:
    """`--out` when not given: `mmoe-report-<checkpoint stem>` (so reports of two checkpoints never share
    a folder), the stem reduced to letters, digits, `.`, `_` and `-`."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint.stem).strip("._") or "model"
    return Path(f"mmoe-report-{stem[:80]}")


def previous_report(out_dir: Path) -> str | None:
    """What the report already at `out_dir` showed ("MMoE (mmoe.pt)"), or None when it holds none."""
    import json

    from mmoe_inspect.reports.write import is_report

    if not is_report(out_dir):
        return None
    try:
        meta = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
        return str(meta.get("model") or meta.get("model_name") or "a model")
    except (OSError, ValueError, AttributeError):
        return "a model"


def write_report_with_progress(
    result: InspectionResult, out_dir: Path, *, force: bool, run: RunOptions
) -> Path:
    """`write_report` with a progress bar over the figures, and a notice when it replaces a previous report
    (its model named), so a report is never replaced silently; returns the path of `index.html`."""
    from mmoe_inspect.reports import write_report

    replaced = previous_report(out_dir)
    label = "figures, slide and tables"
    with Passes(run.quiet) as passes:
        tick = passes.bar(label, None, unit="figures")
        index = write_report(result, out_dir, force=force, progress=tick)
        passes.finish(label)
    if replaced is not None and not run.quiet:
        err.print(
            f"note: replaced the previous report in {escape(str(out_dir))} (it showed {escape(replaced)}); "
            "pass --out to keep reports of several models"
        )
    return index
