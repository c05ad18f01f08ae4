"""Hostile files: names from a checkpoint, a spec file or the data are never paths and never markup.

1. Paths: a spec file that names tasks, gates and experts `../../escape-…`, `/tmp/abs-…` and a
   checkpoint that carries path-like keys (`model_code`, `data`, `out`, `imports`) go through a real
   `mmoe-inspect report` process under a Python audit hook (`sys.addaudithook`) that logs every
   file open, mkdir, rename and removal: none touches a hostile name, and every write lands inside
   the folder the user named (or its temp twin beside it); the causal section runs, attributions are
   left to test 2 (their tables have fixed file names). A spec whose `module` is a path is refused.
2. Markup: task, gate, expert, module, feature and label-column names and category values like
   `<script>alert(1)</script>` and `"><img src=x onerror=alert(1)>` go through a real report
   (causal and attribution sections included) opened in headless Chromium: no JavaScript dialog
   opens (`Page.javascriptDialogOpening` never fires), the page has no script element and no `on*`
   attribute, requests nothing but its own files, and shows every name as text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_report_browser import Chromium
from torch import nn
from typer.testing import CliRunner

from mmoe_inspect import FeatureSpec, inspect
from mmoe_inspect.checkpoint import save_checkpoint
from mmoe_inspect.cli.main import app
from mmoe_inspect.inspector import InspectConfig
from mmoe_inspect.models import MMoE
from mmoe_inspect.reports import write_report
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TAG = uuid.uuid4().hex[:10]  # in every hostile name: no file event may ever mention it


# =========================================================================== 1. paths
AUDITED_RUN = """
import json, os, sys
log = open(sys.argv[1], "w", encoding="utf-8")
EVENTS = {"open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.chmod", "os.truncate"}

def hook(event, args):
    if event not in EVENTS or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.abspath(os.fsdecode(args[0]))
    if event == "open":
        mode, flags = args[1], args[2]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        )
    else:
        writes = True
    extra = [os.path.abspath(os.fsdecode(a)) for a in args[1:2] if event == "os.rename"]
    log.write(json.dumps([event, path, bool(writes), extra]) + "\\n")

sys.addaudithook(hook)
from mmoe_inspect.cli.main import app
sys.argv = ["mmoe-inspect", *sys.argv[2:]]
app()
"""


def hostile_spec(spec: str) -> str:
    """The written spec with every task, gate and expert name replaced by a path-like one."""
    names = {
        '"click"': f'"../../escape-{TAG}"',
        '"buy"': f'"/tmp/abs-{TAG}/x"',
        '"e0"': f'"../e0-{TAG}/../../.."',
        '"e1"': f'"/etc/e1-{TAG}"',
        '"e2"': f'"..\\\\..\\\\e2-{TAG}"',
    }
    for old, new in names.items():
        spec = spec.replace(f"name = {old}", f"name = {new}").replace(f"task = {old}", f"task = {new}")
        spec = spec.replace(f"    {old},\n", f"    {new},\n")
    spec = spec.replace('output = "click"', 'output = "click", label = "click"')
    return spec.replace('output = "buy"', 'output = "buy", label = "buy"')


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({c: rng.normal(size=300).astype("float32") for c in ("x0", "x1", "x2")})
    frame["click"] = rng.integers(0, 2, 300).astype("float32")
    frame["buy"] = rng.integers(0, 2, 300).astype("float32")
    torch.manual_seed(0)
    model = MMoE(
        FeatureSpec.dense_only(3), ["click", "buy"], n_experts=3, expert_hidden=(8,), tower_hidden=(4,)
    )
    ckpt = save_checkpoint(root / "model.pt", model, eval_frame=frame)
    payload = torch.load(ckpt, weights_only=True)
    payload.update(  # keys a malicious or confused checkpoint might carry; none may be followed
        model_code=f"../../evil-{TAG}.py",
        imports=[f"evil_{TAG}"],
        data=f"/tmp/data-{TAG}.parquet",
        out=f"../../out-{TAG}",
        spec=f"/etc/spec-{TAG}.toml",
    )
    torch.save(payload, ckpt)
    (root / f"evil_{TAG}.py").write_text(f"open('{root}/pwned-{TAG}', 'w').write('ran')\n", encoding="utf-8")
    written = CliRunner().invoke(app, ["topology", str(ckpt), "--write", str(root / "spec.toml")])
    assert written.exit_code == 0, written.output
    spec = hostile_spec((root / "spec.toml").read_text(encoding="utf-8"))
    assert spec.count(TAG) >= 10
    (root / "hostile.toml").write_text(spec, encoding="utf-8")
    return {"root": root, "checkpoint": ckpt, "spec": root / "hostile.toml"}


def test_names_from_spec_and_checkpoint_never_become_paths(
    hostile_files: dict[str, Path], tmp_path: Path
) -> None:
    sandbox = tmp_path / "work"
    sandbox.mkdir()
    (tmp_path / "tmp").mkdir()
    out = sandbox / "report"
    log = tmp_path / "events.jsonl"
    env = {
        **os.environ,
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "TMPDIR": str(tmp_path / "tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "COLUMNS": "200",
    }
    cmd = [sys.executable, "-c", AUDITED_RUN, str(log), "report", str(hostile_files["checkpoint"])]
    cmd += [
        "--spec",
        str(hostile_files["spec"]),
        "--out",
        str(out),
        "--quiet",
        "--no-attributions",
        "--bootstrap",
        "0",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=sandbox, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    metrics = (out / "metrics.json").read_text(encoding="utf-8")
    assert f"../../escape-{TAG}" in metrics and f"/etc/e1-{TAG}" in metrics  # the names went through
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert len(events) > 100  # the hook saw the run
    touched_tag = [e for e in events if TAG in e[1] or any(TAG in x for x in e[3])]
    allowed_reads = {str(hostile_files["checkpoint"]), str(hostile_files["spec"])}
    assert [e for e in touched_tag if e[1] not in allowed_reads or e[2]] == []
    roots = [sandbox, tmp_path / "mpl", tmp_path / "tmp"]  # what the user named, and the process's scratch

    def inside(path: str) -> bool:
        return any(path == str(r) or path.startswith(f"{r}{os.sep}") for r in roots)

    writes = [e for e in events if e[2] and not e[1].startswith("/dev/")]
    assert any(e[1].endswith(f"{os.sep}index.html") for e in writes), "the report's writes were not observed"
    outside = [e for e in writes if not inside(e[1]) or not all(inside(x) for x in e[3])]
    assert outside == [], "\n".join(map(str, outside))
    assert {p.name for p in sandbox.iterdir()} == {"report"}  # nothing else, no temp folder left
    assert not (hostile_files["root"] / f"pwned-{TAG}").exists()  # the checkpoint's "imports" never ran
    assert not Path(f"/tmp/abs-{TAG}").exists()


def test_a_spec_module_path_is_a_module_name_not_a_file(
    hostile_files: dict[str, Path], tmp_path: Path
) -> None:
    spec = (
        hostile_files["spec"]
        .read_text(encoding="utf-8")
        .replace('module = "gates.0"', 'module = "../../etc/passwd"')
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(spec, encoding="utf-8")
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["report", str(hostile_files["checkpoint"]), "--spec", str(bad), "--out", str(out), "--quiet"]
    )
    text = ANSI.sub("", result.output)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "../../etc/passwd" in lines[0], text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


# =========================================================================== 2. markup
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
SVG = "<svg onload=alert(3)>"
QUOTE = "' onmouseover='alert(4)"


class NamedMoE(nn.Module):
    """A small MMoE whose module names, task/gate/expert names and output keys are the given strings."""

    def __init__(self, n_features: int, experts: list[str], tasks: list[str], labels: list[str]) -> None:
        super().__init__()
        self.task_names, self.label_columns = tasks, labels
        self.experts = nn.ModuleDict({e: nn.Sequential(nn.Linear(n_features, 4), nn.ReLU()) for e in experts})
        self.gates = nn.ModuleDict(
            {t: nn.Sequential(nn.Linear(n_features, len(experts)), nn.Softmax(dim=1)) for t in tasks}
        )
        self.towers = nn.ModuleDict({t: nn.Linear(4, 1) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stacked = torch.stack([e(x) for e in self.experts.values()], 1)  # [b, E, 4]
        return {
            t: torch.sigmoid(
                self.towers[t](torch.bmm(self.gates[t](x).unsqueeze(1), stacked).squeeze(1))
            ).squeeze(1)
            for t in self.task_names
        }

    def topology(self) -> Topology:
        experts = tuple(ExpertSpec(e, module=f"experts.{e}") for e in self.experts)
        names = tuple(e.name for e in experts)
        tasks = tuple(
            TaskSpec(t, kind="binary", output=t, label=lab)
            for t, lab in zip(self.task_names, self.label_columns, strict=True)
        )
        gates = tuple(GateSpec(t, module=f"gates.{t}", experts=names, task=t) for t in self.task_names)
        return Topology(tasks, experts, gates, architecture="mmoe")


@pytest.fixture(scope="module")
def xss_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    features = [SCRIPT + " f", IMG + " f", "plain"]
    labels = [SVG + " label", QUOTE + " label"]
    model = NamedMoE(3, experts=[SCRIPT, IMG, SVG], tasks=[IMG + " t", SCRIPT + " t"], labels=labels).eval()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({c: rng.normal(size=600).astype("float32") for c in features})
    frame[labels[0]] = (frame[features[0]] > 0).astype("float32")
    frame[labels[1]] = (rng.random(600) < 0.3).astype("float32")
    frame["segment"] = np.array([SCRIPT, IMG, QUOTE])[rng.integers(0, 3, 600)]  # category values

    def input_fn(df: pd.DataFrame) -> torch.Tensor:
        return torch.from_numpy(df[features].to_numpy(np.float32, copy=True))

    result = inspect(
        model,
        frame,
        input_fn=input_fn,
        columns=features,
        config=InspectConfig(batch_size=200),
        model_name=SCRIPT + " model",
        causal={"segment_by": "segment", "n_boot": 20},
        attribution={"sample_rows": 32, "n_steps": 4, "budget_seconds": None},
    )
    assert result.causal is not None and len(result.causal.segments) and result.attribution is not None
    out = tmp_path_factory.mktemp("xss") / "report"
    write_report(result, out)
    return out


PROBE = """JSON.stringify({
  scripts: document.scripts.length,
  handlers: Array.from(document.querySelectorAll('*')).flatMap(e =>
      Array.from(e.attributes).filter(a => a.name.startsWith('on')).map(a => e.tagName + ' ' + a.name)),
  imgs: Array.from(document.images).map(i => i.getAttribute('src')),
  svgs: document.querySelectorAll('svg').length,
  text: document.body.innerText,
  marker: typeof window.__pwned,
})"""


def test_hostile_names_are_text_in_a_real_browser(xss_report: Path, tmp_path: Path) -> None:
    html = (xss_report / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html
    browser = Chromium(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            browser.call(f"{domain}.enable", session=sid)
        url = (xss_report / "index.html").resolve().as_uri()
        browser.call("Page.navigate", {"url": url}, session=sid)

        def loaded_or_dialog(m: dict) -> bool:
            return m.get("method") in ("Page.loadEventFired", "Page.javascriptDialogOpening")

        first = browser.wait_for(loaded_or_dialog)
        assert first["method"] == "Page.loadEventFired", first  # a dialog would have come first
        dom = json.loads(
            browser.call("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=sid)[
                "result"
            ]["value"]
        )
        events = list(browser.events)
    finally:
        browser.close()
    assert [e for e in events if e["method"] == "Page.javascriptDialogOpening"] == []
    assert dom["scripts"] == 0 and dom["handlers"] == [] and dom["svgs"] == 0
    assert all(src.startswith(("figures/", "overview.png")) for src in dom["imgs"]), dom["imgs"]
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    base = xss_report.resolve().as_uri()
    assert requests and all(u.startswith(base + "/") for u in requests), requests  # no src=x fetched
    text = dom["text"]
    for name in (SCRIPT, IMG, SVG, SCRIPT + " model", SCRIPT + " f", IMG + " t", SVG + " label"):
        assert name in text, name  # shown to the reader as the literal string
    assert QUOTE in text  # a category value of the segment column


# =========================================================================== the README's promises
def test_every_promise_points_to_tests_that_exist() -> None:
    """README "What mmoe-inspect promises": each row names tests, and every named test is defined."""
    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What mmoe-inspect promises", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if re.match(r"^\| \d+ \|", ln)]
    assert len(rows) >= 9
    for row in rows:
        refs = re.findall(r"`(test_\w+\.py)(?:::(\w+))?`", row)
        assert refs, row
        for file, name in refs:
            source = (root / "tests" / file).read_text(encoding="utf-8")
            assert not name or re.search(rf"^def {name}\(", source, re.M), f"{file}::{name}"
