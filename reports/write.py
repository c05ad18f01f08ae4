"""`write_report`: build the whole report folder in a temp folder next to the target, then swap it in.

`write_folder` is the atomic machinery itself (also used by `write_diff`): any folder of ours carries
the marker file, and only our own entries are ever replaced in a folder that holds other files.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from mmoe_inspect.results import METRICS_SCHEMA_VERSION, InspectionResult

from .figures import render_figures
from .html import render_html
from .overview import write_overview
from .structure import get_report_structure

MARKER = ".mmoe-inspect-report"
OVERVIEW = "overview.png"
# Everything a report (or diff) folder holds; anything else in a target folder belongs to the user.
REPORT_ENTRIES = (MARKER, "index.html", OVERVIEW, "metrics.json", "figures", "tables")
DIFF_ENTRIES = (MARKER, "index.html", "diff.json", "figures")
OWN_ENTRIES = tuple(dict.fromkeys(REPORT_ENTRIES + DIFF_ENTRIES))


class ReportError(RuntimeError):
    """The report could not be written (target folder refused, or a figure/table failed)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmoe-inspect")
    except PackageNotFoundError:
        return "dev"


def is_report(folder: str | Path) -> bool:
    """True when `folder` holds a report written by `write_report` (it carries the marker file)."""
    return (Path(folder) / MARKER).is_file()


def write_marker(folder: Path, kind: str) -> None:
    marker = {
        "tool": "mmoe-inspect",
        "kind": kind,
        "version": _version(),
        "metrics_schema": METRICS_SCHEMA_VERSION,
    }
    (folder / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def build_report(result: InspectionResult, folder: str | Path) -> Path:
    """Write the report files into an existing empty `folder` (no atomicity; `write_report` wraps this)."""
    folder = Path(folder)
    figures = render_figures(result, folder / "figures")
    write_overview(result, folder / OVERVIEW)
    (folder / "metrics.json").write_text(result.to_json(indent=2) + "\n", encoding="utf-8")
    written = result.save_tables(folder / "tables")
    if result.findings:
        result.findings_frame().to_csv(folder / "tables" / "findings.csv", index=False)
    report = get_report_structure(
        result,
        {name: f"figures/{file}" for name, file in figures.items()},
        [p.stem for p in written],
        overview=OVERVIEW,
    )
    (folder / "index.html").write_text(render_html(report, version=_version()), encoding="utf-8")
    write_marker(folder, "report")
    return folder / "index.html"


def write_report(result: InspectionResult, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write `result` as a report folder at `out_dir` and return the path of its `index.html`.

    The folder holds `index.html` (opens offline: inline CSS, relative images), `overview.png` (one
    16:9 slide), `figures/*.png`, `metrics.json` (= `result.to_metrics()`), `tables/*.csv` and a
    marker file. Everything is
    written into a temp folder next to `out_dir` and moved into place only when complete: on
    any error the temp folder is removed and a previous report is left untouched.

    A previous report at `out_dir` is replaced. A non-empty folder that is not a report is refused
    (`ReportError`) unless `force=True`; then only the report's own entries (`index.html`,
    `metrics.json`, `figures/`, `tables/`) are replaced and other files are kept.

    Examples::

        >>> path = write_report(result, "out/report")   # out/report/index.html
    """
    out = write_folder(out_dir, lambda tmp: build_report(result, tmp), force=force)
    return out / "index.html"


def write_folder(
    out_dir: str | Path,
    build: Callable[[Path], object],
    *,
    force: bool = False,
    entries: tuple[str, ...] = REPORT_ENTRIES,
) -> Path:
    """Run `build(tmp)` on a fresh temp folder next to `out_dir`, then swap it in as `out_dir` (returned).

    `build` writes the folder's files (a marker among them); on any error nothing changes at `out_dir`.
    A folder of ours (marker file) is replaced; a non-empty foreign folder is refused unless `force`,
    and then only `entries` (what `build` writes) are replaced, the user's other files kept.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out} exists and is not a folder")
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    previous = out.is_dir() and is_report(out)
    if existing and not previous and not force:
        raise ReportError(
            f"{out} is not empty and does not hold an mmoe-inspect report; choose another folder or pass "
            "force=True (--force) to write the report files into it"
        )
    whole_folder = not existing or (previous and set(existing) <= set(OWN_ENTRIES))
    tmp = _aside(out, "tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # exclusive, and honors the umask (unlike mkdtemp's 0700)
    except OSError as exc:  # a read-only or missing parent, a full disk: the user's to fix, one line
        raise ReportError(f"cannot create a folder next to {out}: {exc.strerror or exc}") from exc
    try:
        try:
            build(tmp)
        except ReportError:
            raise
        except Exception as exc:
            raise ReportError(f"writing the report failed: {type(exc).__name__}: {exc}") from exc
        try:
            if whole_folder:
                _swap_folder(tmp, out)
            else:
                _swap_entries(tmp, out, entries)
        except OSError as exc:  # the swaps put back what they moved before re-raising
            raise ReportError(
                f"moving the finished report into {out} failed ({exc.strerror or exc}); "
                "what was there before is unchanged"
            ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _aside(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:8]}"


def _swap_folder(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` (a report, or empty) is moved aside first and removed after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = _aside(out, "old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _swap_entries(tmp: Path, out: Path, entries: tuple[str, ...]) -> None:
    """Replace only the report's own entries inside `out`, keeping the user's other files."""
    old = _aside(out, "old")
    old.mkdir()
    moved: list[str] = []
    installed: list[str] = []
    try:
        for name in entries:
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, old / name)
                moved.append(name)
        for name in entries:
            if (tmp / name).exists():
                os.replace(tmp / name, out / name)
                installed.append(name)
    except BaseException:
        for name in installed:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        for name in moved:
            os.replace(old / name, out / name)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
