"""Issue 16's "Why", answered in the README: the tour's report commands write distinct folders (the
`report ... --spec ple.toml` line no longer overwrites the MMoE report), and each point of the issue
is stated where a reader looks for it (the behaviour itself is tested in test_review_cli.py,
test_review_figures.py, test_training_section.py, test_monitor_readme.py, test_cli.py,
test_report_browser.py and test_review.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from mmoe_inspect.cli._write import default_out_dir

README = Path(__file__).parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _commands(block: str) -> list[list[str]]:
    """The tour's commands (continuation lines joined, comments dropped) as argv lists."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(ln.split("#")[0]) for ln in joined.splitlines() if ln.startswith("mmoe-inspect")]


def _out_dir(argv: list[str]) -> str:
    if "--out" in argv:
        return argv[argv.index("--out") + 1].rstrip("/")
    return str(default_out_dir(Path(argv[2])))


def test_tour_reports_never_share_a_folder() -> None:
    [block] = re.findall(r"```bash\n(.*?)```", _section("## A short tour"), re.S)
    reports = [argv for argv in _commands(block) if argv[1] == "report"]
    assert len(reports) >= 3
    outs = [_out_dir(argv) for argv in reports]
    assert len(set(outs)) == len(outs), outs
    for argv, out in zip(reports, outs, strict=True):  # the comment names the folder a default writes
        if "--out" not in argv:
            line = next(ln for ln in block.splitlines() if ln.startswith(" ".join(argv[:3])))
            assert f"writes {out}/" in line, line


def test_every_why_point_is_answered_in_the_readme() -> None:
    tour = _section("## A short tour")
    intro = README.read_text(encoding="utf-8")[: README.read_text(encoding="utf-8").index("## A short tour")]
    monitor = _section("## Gate health during training")
    answers = {
        "task at chance first": (tour, ["Does every task work?", "at chance"]),
        "headline MI/TV in context": (tour, ["only because a gate collapsed"]),
        "one AUC everywhere": (tour, ["exact everywhere", "roc_auc_score"]),
        "multi-task gain with its interval": (tour, ["Did multi-task training help?", "significant"]),
        "demo comparison is honest": (intro, ["paired intervals (DeLong", "supported", "not shown"]),
        "one diagnosis, severity by impact": (tour, ["**Diagnosis** groups", "measured impact"]),
        "co-activation masks idle experts": (tour, ["co-activation", "grayed out"]),
        "table() typo raises": (tour, ["KeyError with close names"]),
        "no silent overwrite": (tour, ["mmoe-report-<checkpoint name>", "replaced the previous"]),
        "progress with rate, early checks": (tour, ["rate and ETA", "before the long pass", "--segment-by"]),
        "check in a CI log": (tour, ["one block per finding", "CI log"]),
        "monitor to report": (monitor, ["save_checkpoint(", "mmoe-inspect report mmoe.pt --run"]),
        "feature names of reference models": (monitor, ["x0..x7", "refused in one line"]),
        "training figures": (monitor, ["loss over"]),
        "Jupyter view with the review": (tour, ["the Jupyter view open with the questions"]),
        "figure nits": (tour, ["axis ends at E", "2 x 2 heatmap", "-0.000", "absolute path", "transposed"]),
    }
    missing = {point: [p for p in phrases if p not in where] for point, (where, phrases) in answers.items()}
    assert {k: v for k, v in missing.items() if v} == {}
