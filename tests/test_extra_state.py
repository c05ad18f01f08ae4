"""State_dicts with `_extra_state` entries (modules with `get_extra_state` / `set_extra_state`).

Such an entry holds whatever the module returned, not a tensor, so a state_dict (or a training dict holding one)
with it was refused as "no state_dict in it". Plain values and tensors now load weights-only; other objects
still need full unpickling: refused without --trust-checkpoint, with a message that says it is a state_dict
and what would let it load (trust, plain values from get_extra_state, or torch.serialization.add_safe_globals).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch

import mmoe_inspect as mi
from mmoe_inspect.loading.checkpoints import UntrustedCheckpointError, load_model

MODELS_FILE = Path(__file__).resolve().parent / "extra_state_models.py"
FEATURES = [f"x{i}" for i in range(8)]


def _save(tmp_path: Path, kind: str, wrap: bool, marker: str = "") -> tuple[Path, Path]:
    """Save a copy of the models file's `ExtraStateMMoE(kind)` state_dict (click's gate planted collapsed on
    expert 1), bare or inside a training dict; returns (checkpoint, code file)."""
    code = tmp_path / "xs_models.py"
    shutil.copy(MODELS_FILE, code)
    spec = importlib.util.spec_from_file_location("xs_models", code)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules["xs_models"] = module
    try:
        spec.loader.exec_module(module)
        model = module.ExtraStateMMoE(kind, marker)
        with torch.no_grad():
            model.gates["click"].weight.zero_()
            model.gates["click"].bias.copy_(torch.tensor([-30.0, 30.0, -30.0]))
        state = model.state_dict()
        assert "bank._extra_state" in state
        ckpt = tmp_path / "model.pt"
        torch.save({"state_dict": state, "epoch": 3, "lr": 1e-3} if wrap else state, ckpt)
    finally:
        del sys.modules["xs_models"]
    return ckpt, code


def frame(rows: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(rows, 8)).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("float64")
    f["buy"] = (f["x1"] > 0.5).astype("float64")
    return f


def _load(ckpt: Path, code: Path, builder: str, **kw: object) -> mi.LoadedModel:
    try:
        return load_model(ckpt, builder=f"xs_models:{builder}", model_code=code, **kw)  # type: ignore[arg-type]
    finally:
        sys.modules.pop("xs_models", None)


@pytest.mark.parametrize("wrap", [False, True], ids=["state_dict", "training_dict"])
@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("plain", lambda r: r == {"version": 2, "scale": 0.5, "name": "fp8", "history": [1.0, 2.0]}),
        ("tensor", lambda r: torch.equal(r, torch.arange(3.0))),
    ],
)
def test_plain_extra_state_loads_weights_only(
    tmp_path: Path, kind: str, check: Callable[[object], bool], wrap: bool
) -> None:
    ckpt, code = _save(tmp_path, kind, wrap)
    loaded = _load(ckpt, code, f"build_{kind}")
    assert loaded.form.startswith("training dict" if wrap else "state_dict"), loaded.form
    assert check(loaded.model.bank.record)  # set_extra_state got the saved value
    result = mi.inspect(loaded.model, frame(), input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()))
    assert {f.subject for f in result.findings if f.code == "collapsed_gate"} == {"click"}


@pytest.mark.parametrize("wrap", [False, True], ids=["state_dict", "training_dict"])
def test_extra_state_objects_need_trust_and_the_refusal_says_what_would_load_them(
    tmp_path: Path, wrap: bool
) -> None:
    ckpt, code = _save(tmp_path, "meta", wrap)
    with pytest.raises(UntrustedCheckpointError) as err:
        _load(ckpt, code, "build_meta")
    msg = str(err.value)
    assert "a state_dict whose extra state (bank._extra_state" in msg and "xs_models.Meta" in msg, msg
    assert "--trust-checkpoint" in msg and "get_extra_state() return plain values" in msg
    assert "add_safe_globals" in msg and "save model.state_dict()" not in msg  # it is one already
    loaded = _load(ckpt, code, "build_meta", trust=True)
    assert loaded.model.bank.record.version == 2 and loaded.model.bank.record.scale == 0.5


def test_a_hostile_extra_state_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    ckpt, code = _save(tmp_path, "hostile", True, str(marker))
    with pytest.raises(UntrustedCheckpointError) as err:
        _load(ckpt, code, "build_plain")
    msg = str(err.value)
    assert "a state_dict whose extra state" in msg and "system can load files" in msg, msg
    assert msg.index("WARNING") < msg.index("it would import") and "add_safe_globals" not in msg
    assert not marker.exists()
