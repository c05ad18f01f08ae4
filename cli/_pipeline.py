"""What the commands share after option parsing: load a checkpoint (and the `--baseline` ones), then call
`LoadedModel.inspect` once, with the progress bars. The library runs the passes, the causal analyses and
the attributions, and records why any of them did not run; nothing here edits the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from ._common import EXIT_NEEDS_INPUT, LoadOptions, OptionError, RunOptions, err
from ._progress import Passes

if TYPE_CHECKING:
    import pandas as pd

    from mmoe_inspect.attribution.options import AttributionOptions
    from mmoe_inspect.causal.options import CausalOptions
    from mmoe_inspect.distributed import DistContext
    from mmoe_inspect.loading import LoadedModel
    from mmoe_inspect.results import InspectionResult


def parse_baselines(values: Sequence[str] | None) -> dict[str, Path]:
    """`["sb=sb.pt", "single=single.pt"]` → `{"sb": Path("sb.pt"), ...}` (names unique, files exist)."""
    found: dict[str, Path] = {}
    for value in values or ():
        name, sep, path = (p.strip() for p in value.partition("="))
        if not sep or not name or not path:
            raise OptionError(f"--baseline {value!r} must look like NAME=PATH")
        if name in found:
            raise OptionError(f"--baseline names {name!r} twice")
        if name in ("label", "model", "row") or ":" in name:
            raise OptionError(f"--baseline name {name!r} is reserved; pick another name")
        p = Path(path).expanduser().absolute()
        if not p.is_file():
            raise OptionError(f"--baseline {name}: {p} does not exist")
        found[name] = p
    return found


def read_run(path: Path) -> pd.DataFrame:
    """A `GateMonitor` run log (`--run`), checked before the long pass; a problem is an `OptionError`."""
    from mmoe_inspect.monitor import RunLogError, load_run_log

    try:
        return load_run_log(path)
    except RunLogError as exc:
        raise OptionError(f"--run {exc}") from None


def inspect_checkpoint(
    checkpoint: Path,
    load: LoadOptions,
    run: RunOptions,
    *,
    spec: Path | None = None,
    causal: CausalOptions | None = None,
    attribution: AttributionOptions | None = None,
    label: str | None = None,
    model_name: str | None = None,
    dist: DistContext | None = None,
    on_recorded: Callable[[InspectionResult], None] | None = None,
    rows: Any | None = None,
) -> InspectionResult:
    """Load `checkpoint` and inspect it (`LoadedModel.inspect`) with progress bars; `causal.baselines`
    may hold checkpoint paths, loaded here with the main model's loading options before the pass;
    `on_recorded` goes to `inspect` (the report's early figures). `rows` (a DataFrame) replaces the
    checkpoint's stored rows when there is no --data (`diff` inspects both checkpoints on one set)."""
    import dataclasses

    import torch

    torch.manual_seed(run.seed)
    loaded = load.load(checkpoint, quiet=run.quiet)
    data = load.data if load.data is not None else rows
    if data is None:
        check_stored_rows(loaded, load, spec)
    source = loaded.source(data)
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
    if causal is not None and (dist is None or dist.is_main):  # baselines load where they run (rank 0)
        loaded_baselines = {name: _baseline(load, run, b) for name, b in causal.baselines.items()}
        causal = dataclasses.replace(causal, baselines=loaded_baselines)
    with Passes(run.quiet) as passes:
        result = loaded.inspect(
            source if data is not None else None,
            tasks=load.tasks,
            labels=load.labels,
            input=load.input,  # type: ignore[arg-type]
            features=load.features,
            collate=load.collate,
            topology=spec,
            config=load.config(run.seed),
            model_name=model_name or f"{type(loaded.model).__name__} ({checkpoint.name})",
            binding=binding,
            causal=causal if causal is not None else False,
            attribution=attribution if attribution is not None else False,
            progress=passes,
            label=label or checkpoint.name,
            distributed=dist is not None,
            on_recorded=on_recorded,
        )
    if not run.quiet:
        for key, what, requested in (
            ("attribution", "attributions", attribution),
            ("causal", "causal analyses", causal),
        ):
            if requested is not None and result.skipped.get(key):
                err.print(f"note: no {what}: {escape(result.skipped[key])}")
    return result


def _baseline(load: LoadOptions, run: RunOptions, value: Any) -> Any:
    """A `--baseline` checkpoint path, loaded like the main model; any other value as given."""
    return load.load(value, quiet=run.quiet) if isinstance(value, Path) else value


def check_stored_rows(loaded: LoadedModel, load: LoadOptions, spec: Path | None) -> None:
    """Our checkpoint without stored rows and no --data: say what is known, then exit 2."""
    if load.data is None and loaded.eval_frame is None and loaded.checkpoint is not None:
        from mmoe_inspect.binding import resolve_topology

        topo = resolve_topology(loaded.model, spec)
        err.print(f"model {type(loaded.model).__name__}\n{topo.describe()}", markup=False)
        err.print("[red]error:[/red] this checkpoint stores no evaluation rows: pass --data FILE.parquet")
        raise typer.Exit(EXIT_NEEDS_INPUT)
