"""A corpus of bad checkpoints, data and flags through `mmoe-inspect report`: every one gives exit code 2,
one line naming the problem, no traceback, and no report folder."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mmoe_inspect.cli.main import app

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

BUILDERS = '''
"""Factories for the corpus (the user's code)."""
import torch
from torch_rechub.basic.features import DenseFeature, SparseFeature
from torch_rechub.models.multi_task import MMOE


def features():
    return [SparseFeature("city", 12, embed_dim=4), SparseFeature("item", 9, embed_dim=4), DenseFeature("age")]


def mmoe():
    return MMOE(features(), ["classification", "classification"], 3, {"dims": [8]}, [{"dims": [4]}] * 2)


def wider_mmoe():
    return MMOE(features(), ["classification", "classification"], 4, {"dims": [6]}, [{"dims": [4]}] * 2)


def not_a_model():
    return "a string"
'''


class Evil:
    """Unpickling runs a shell command that writes a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


class Corpus:
    """Files shared by the cases: a rechub MMOE saved whole and as a state_dict, good rows, factories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.code = root / "corpus_builders.py"
        self.code.write_text(BUILDERS)
        from torch_rechub.basic.features import DenseFeature, SparseFeature
        from torch_rechub.models.multi_task import MMOE

        torch.manual_seed(0)
        feats = [
            SparseFeature("city", 12, embed_dim=4),
            SparseFeature("item", 9, embed_dim=4),
            DenseFeature("age"),
        ]
        model = MMOE(
            feats, ["classification", "classification"], 3, {"dims": [8]}, [{"dims": [4]}] * 2
        ).eval()
        self.whole = root / "whole.pt"
        torch.save(model, self.whole)
        self.state = root / "state.pt"
        torch.save(model.state_dict(), self.state)
        rng = np.random.default_rng(0)
        self.frame = pd.DataFrame(
            {
                "city": rng.integers(0, 12, 200),
                "item": rng.integers(0, 9, 200),
                "age": rng.normal(size=200).astype("float32"),
                "click": rng.integers(0, 2, 200),
                "buy": rng.integers(0, 2, 200),
            }
        )
        self.data = self.parquet("good", self.frame)

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def parquet(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.root / f"{name}.parquet"
        frame.to_parquet(path)
        return path

    def changed(self, name: str, **columns) -> Path:
        return self.parquet(name, self.frame.assign(**columns))

    def state_args(self) -> list[str]:
        return [
            self.state,
            "--builder",
            "corpus_builders:mmoe",
            "--model-code",
            self.code,
            "--tasks",
            "click,buy",
        ]

    def whole_args(self) -> list[str]:
        return [self.whole, "--trust-checkpoint", "--tasks", "click,buy"]


def _truncated(c: Corpus) -> list:
    raw = c.whole.read_bytes()
    return [c.file("half.pt", raw[: len(raw) // 2])]


def _torchscript(c: Corpus) -> list:
    path = c.root / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1))), path)
    return [path]


def _exported(c: Corpus) -> list:
    path = c.root / "exported.pt2"
    model = nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1))
    torch.export.save(torch.export.export(model, (torch.randn(2, 3),)), path)
    return [path]


def _evil(c: Corpus) -> list:
    path = c.root / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hook": Evil(c.root / "pwned.txt")}, path)
    return [path, "--data", c.data]


def _script_pickle(c: Corpus) -> list:
    """A model whose class lived in a training script's `__main__`, pickled whole."""
    import sys

    namespace: dict = {"__name__": "__main__"}
    exec(
        "import torch\n"
        "class ScriptMMoE(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(3, 2)\n",
        namespace,
    )
    main = sys.modules["__main__"]
    main.ScriptMMoE = namespace["ScriptMMoE"]  # as when `python train.py` saved it
    try:
        path = _save(c, "script.pt", namespace["ScriptMMoE"]())
    finally:
        del main.ScriptMMoE
    return [path, "--trust-checkpoint", "--data", c.data]


def _empty_folder(c: Corpus) -> list:
    folder = c.root / "no-parquet"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("nothing here")
    return [*c.whole_args(), "--data", folder]


# (id, build args from the corpus, words the one-line message must contain)
CASES: list[tuple[str, Callable[[Corpus], list], tuple[str, ...]]] = [
    # ---- checkpoint files
    ("missing-checkpoint", lambda c: [c.root / "nope.pt"], ("nope.pt", "does not exist")),
    ("empty-checkpoint", lambda c: [c.file("empty.pt", b"")], ("empty",)),
    ("truncated-checkpoint", _truncated, ("truncated",)),
    (
        "random-bytes",
        lambda c: [c.file("noise.pt", bytes(range(7, 256)) * 20)],
        ("not a PyTorch checkpoint",),
    ),
    ("json-file", lambda c: [c.file("model.json", '{"layers": [1, 2]}')], ("JSON file",)),
    ("text-file", lambda c: [c.file("spec.toml", "[[tasks]]\nname = 'click'\n")], ("text file",)),
    ("pickled-list", lambda c: [_save(c, "list.pt", [1, 2])], ("holds a list",)),
    ("data-as-checkpoint", lambda c: [c.data], ("parquet file", "--data")),
    ("checkpoint-folder", lambda c: [c.root], ("folder",)),
    # ---- pickles and compiled archives
    (
        "whole-module-untrusted",
        lambda c: [c.whole, "--data", c.data],
        ("torch_rechub.models.multi_task.mmoe.MMOE", "--trust-checkpoint"),
    ),
    ("malicious-pickle", _evil, (f"{os.system.__module__}.system", "WARNING")),
    ("torchscript", _torchscript, ("TorchScript", "hooks cannot")),
    ("torch-export", _exported, ("torch.export", "state_dict")),
    ("script-class-missing", _script_pickle, ("__main__.ScriptMMoE", "--model-code")),
    # ---- state_dicts and user code
    ("state-dict-no-builder", lambda c: [c.state, "--data", c.data], ("state_dict", "--builder")),
    (
        "state-dict-wrong-model",
        lambda c: [c.state, "--builder", "corpus_builders:wider_mmoe", "--model-code", c.code],
        ("does not fit", "missing"),
    ),
    (
        "builder-no-module",
        lambda c: [c.state, "--builder", "nowhere.models:build"],
        ("no module named 'nowhere'",),
    ),
    (
        "builder-no-function",
        lambda c: [c.state, "--builder", "corpus_builders:build", "--model-code", c.code],
        ("has no attribute 'build'",),
    ),
    (
        "builder-not-a-model",
        lambda c: [c.state, "--builder", "corpus_builders:not_a_model", "--model-code", c.code],
        ("not a torch nn.Module",),
    ),
    (
        "builder-malformed",
        lambda c: [c.state, "--builder", "corpus_builders.mmoe"],
        ("package.module:function",),
    ),
    (
        "model-code-missing",
        lambda c: [c.state, "--builder", "x:y", "--model-code", c.root / "absent.py"],
        ("absent.py", "does not exist"),
    ),
    (
        "model-code-syntax-error",
        lambda c: [c.state, "--builder", "bad_code:f", "--model-code", c.file("bad_code.py", "def f(:\n")],
        ("SyntaxError",),
    ),
    (
        "import-missing",
        lambda c: [*c.whole_args(), "--import", "not_a_real_module_q"],
        ("--import not_a_real_module_q",),
    ),
    ("bad-device", lambda c: [*c.whole_args(), "--device", "quantum"], ("--device", "quantum")),
    # ---- data files
    (
        "data-missing",
        lambda c: [*c.whole_args(), "--data", c.root / "absent.parquet"],
        ("absent.parquet", "does not exist"),
    ),
    ("data-empty-file", lambda c: [*c.whole_args(), "--data", c.file("empty.csv", "")], ("empty",)),
    (
        "data-header-only",
        lambda c: [*c.whole_args(), "--data", c.file("header.csv", "city,item,age\n")],
        ("no rows",),
    ),
    (
        "data-zero-rows",
        lambda c: [*c.whole_args(), "--data", c.parquet("zero", c.frame.iloc[:0])],
        ("no rows",),
    ),
    (
        "data-random-bytes",
        lambda c: [*c.whole_args(), "--data", c.file("noise.parquet", b"PAR1" + bytes(range(256)))],
        ("not a readable parquet",),
    ),
    (
        "data-wrong-suffix",
        lambda c: [*c.whole_args(), "--data", c.file("rows.txt", "a,b\n1,2\n")],
        ("must be .parquet or .csv",),
    ),
    ("data-empty-folder", _empty_folder, ("holds no .parquet",)),
    ("no-data-at-all", lambda c: c.whole_args(), ("no evaluation rows", "--data")),
    # ---- columns and values
    (
        "misspelt-column",
        lambda c: [*c.whole_args(), "--data", c.parquet("misspelt", c.frame.rename(columns={"city": "cty"}))],
        ("'city'", "did you mean 'cty'"),
    ),
    (
        "non-numeric",
        lambda c: [*c.whole_args(), "--data", c.changed("text", age=["old"] * 200)],
        ("'age'", "not numeric", "'old'"),
    ),
    ("csv-text", lambda c: [*c.whole_args(), "--data", _csv_with_text(c)], ("'age'", "not numeric")),
    (
        "nan-feature",
        lambda c: [*c.whole_args(), "--data", c.changed("nan", age=np.r_[np.nan, c.frame.age[1:]])],
        ("'age'", "NaN/inf"),
    ),
    (
        "inf-feature",
        lambda c: [
            *c.whole_args(),
            "--data",
            c.changed("inf", age=np.r_[c.frame.age[:150], np.inf, c.frame.age[151:]]),
        ],
        ("'age'", "NaN/inf"),
    ),
    (
        "id-out-of-range",
        lambda c: [*c.whole_args(), "--data", c.changed("ids", city=np.r_[c.frame.city[:-1], 40])],
        ("'city'", "holds 40", "12 rows"),
    ),
    (
        "label-not-binary",
        lambda c: [*c.whole_args(), "--data", c.changed("labels", click=np.r_[c.frame.click[:-1], 3])],
        ("'click'", "must be 0 or 1"),
    ),
    (
        "label-text",
        lambda c: [*c.whole_args(), "--data", c.changed("labeltext", buy=["yes"] * 200)],
        ("'buy'", "not numeric"),
    ),
    # ---- mapping flags
    (
        "labels-unknown-task",
        lambda c: [*c.whole_args(), "--data", c.data, "--labels", "clik=click"],
        ("clik", "did you mean 'click'"),
    ),
    (
        "labels-missing-column",
        lambda c: [*c.whole_args(), "--data", c.data, "--labels", "click=is_click"],
        ("is_click", "did you mean 'click'"),
    ),
    (
        "labels-malformed",
        lambda c: [*c.whole_args(), "--data", c.data, "--labels", "click"],
        ("task=column",),
    ),
    (
        "tasks-wrong-count",
        lambda c: [c.whole, "--trust-checkpoint", "--data", c.data, "--tasks", "a,b,c"],
        ("3 names", "2 tasks"),
    ),
    (
        "features-unknown",
        lambda c: [*c.whole_args(), "--data", c.data, "--features", "city,item,agee"],
        ("agee", "did you mean 'age'"),
    ),
    (
        "collate-missing",
        lambda c: [*c.whole_args(), "--data", c.data, "--collate", "nowhere:collate"],
        ("--collate", "nowhere"),
    ),
    (
        "sample-out-of-range",
        lambda c: [*c.whole_args(), "--data", c.data, "--sample", "1.5"],
        ("sample", "(0, 1]"),
    ),
]


def _save(c: Corpus, name: str, obj) -> Path:
    path = c.root / name
    torch.save(obj, path)
    return path


def _csv_with_text(c: Corpus) -> Path:
    """A CSV whose 'age' column is numbers except for one word far from the first rows."""
    frame = c.frame[["city", "item", "age"]].astype({"age": object})
    frame.loc[150, "age"] = "unknown"
    path = c.root / "text.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("corpus"))


def test_corpus_is_large_and_distinct() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) >= 20 and len(set(ids)) == len(ids)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize(("build", "expected"), [pytest.param(b, e, id=i) for i, b, e in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(build, expected, corpus: Corpus, tmp_path) -> None:
    out = tmp_path / "report"
    args = [str(a) for a in ["report", *build(corpus), "--out", out]]
    result = runner.invoke(app, args)
    text = ANSI.sub("", result.output)
    assert result.exit_code == 2, text
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for word in expected:
        assert word in lines[0], (word, lines[0])
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp folder left beside it either
    assert not (corpus.root / "pwned.txt").exists()


def test_the_same_files_work_with_the_right_flags(corpus: Corpus, tmp_path) -> None:
    """The corpus's good files load and inspect, so the failures above are the bad inputs' doing."""
    result = runner.invoke(app, [str(a) for a in ["topology", *corpus.whole_args(), "--data", corpus.data]])
    assert result.exit_code == 0, ANSI.sub("", result.output)
    assert "gate click: module gates.0" in ANSI.sub("", result.output)
    out = tmp_path / "report"
    result = runner.invoke(
        app, [str(a) for a in ["report", *corpus.state_args(), "--data", corpus.data, "--out", out]]
    )
    assert result.exit_code == 0, ANSI.sub("", result.output)
    assert (out / "index.html").exists()
