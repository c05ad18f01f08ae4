"""Config objects refuse bad values where they are built, in one line naming the field and its valid range
(`InspectConfig(batch_size=0)` used to fail deep in the run with "range() arg 3 must not be zero")."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from mmoe_inspect import GateMonitor, InspectConfig, Thresholds
from mmoe_inspect._validate import check_number
from mmoe_inspect.analysis.findings import Thresholds as _T
from mmoe_inspect.testing.planted import PlantedMMoE


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------------------------ the helper
@pytest.mark.parametrize(
    ("value", "kwargs", "error", "words"),
    [
        pytest.param(
            0, {"low": 1, "integer": True}, ValueError, "X.f must be an integer >= 1, got 0", id="below"
        ),
        pytest.param(
            2.5, {"low": 0.0, "high": 1.0}, ValueError, "must be a number in [0, 1], got 2.5", id="above"
        ),
        pytest.param(
            0.0, {"low": 0.0, "high": 1.0, "low_open": True}, ValueError, "in (0, 1]", id="open-low"
        ),
        pytest.param(math.nan, {"low": 0.0, "high": 1.0}, ValueError, "got nan", id="nan"),
        pytest.param(True, {"low": 1, "integer": True}, TypeError, "got True (bool)", id="bool"),
        pytest.param(
            4.0, {"low": 1, "integer": True}, TypeError, "an integer >= 1, got 4.0 (float)", id="float-int"
        ),
        pytest.param("0.5", {"low": 0.0, "high": 1.0}, TypeError, "got '0.5' (str)", id="text"),
        pytest.param(None, {"low": 1, "integer": True}, TypeError, "got None", id="none-not-optional"),
        pytest.param(
            0, {"low": 1, "integer": True, "optional": True}, ValueError, ">= 1 or None", id="optional"
        ),
    ],
)
def test_check_number_refuses_in_one_line(value, kwargs, error, words) -> None:
    with pytest.raises(error) as exc:
        check_number("X", "f", value, **kwargs)
    assert words in _one_line(exc)


def test_check_number_accepts_the_range_ends() -> None:
    import numpy as np

    check_number("X", "f", 1, low=1, integer=True)
    check_number("X", "f", np.int64(7), low=1, integer=True)  # numpy integers are integers
    check_number("X", "f", 1.0, low=0.0, high=1.0, low_open=True)
    check_number("X", "f", None, low=1, integer=True, optional=True)


# ------------------------------------------------------------------------------------ Thresholds
def test_thresholds_defaults_and_range_ends_are_valid() -> None:
    assert Thresholds is _T  # the top-level name is the analysis one
    Thresholds()
    Thresholds(collapse_weight=1.0, collapse_top1=0.0, identical_tv=0.0, mild_tv=1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        pytest.param(
            {"collapse_weight": 90},
            ValueError,
            "Thresholds.collapse_weight must be a number in [0, 1], got 90",
            id="percent",
        ),
        pytest.param(
            {"mild_tv": -0.1}, ValueError, "Thresholds.mild_tv must be a number in [0, 1]", id="negative"
        ),
        pytest.param({"redundant_cka": math.nan}, ValueError, "Thresholds.redundant_cka", id="nan"),
        pytest.param({"sparse_rate": "0.05"}, TypeError, "Thresholds.sparse_rate", id="text"),
    ],
)
def test_thresholds_refuse_values_out_of_range(kwargs, error, words) -> None:
    with pytest.raises(error) as exc:
        Thresholds(**kwargs)
    assert words in _one_line(exc)


# ------------------------------------------------------------------------------------ InspectConfig
def test_inspect_config_defaults_and_range_ends_are_valid() -> None:
    InspectConfig()
    InspectConfig(
        batch_size=1,
        max_rows=1,
        reservoir_size=1,
        expert_sample_rate=1.0,
        expert_sample_rows=1,
        sample=1.0,
        read_ahead_rows=1,
        stats_chunk_rows=1,
        seed=2**32 - 1,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        pytest.param(
            {"batch_size": 0},
            ValueError,
            "InspectConfig.batch_size must be an integer in [1, 16777216], got 0",
            id="batch-0",
        ),
        pytest.param(
            {"batch_size": 256.0}, TypeError, "InspectConfig.batch_size must be an integer", id="batch-float"
        ),
        pytest.param(
            {"reservoir_size": 0},
            ValueError,
            "InspectConfig.reservoir_size must be an integer >= 1",
            id="reservoir",
        ),
        pytest.param(
            {"expert_sample_rate": 0.0},
            ValueError,
            "InspectConfig.expert_sample_rate must be a number in (0, 1]",
            id="rate-0",
        ),
        pytest.param(
            {"expert_sample_rate": 5}, ValueError, "InspectConfig.expert_sample_rate", id="rate-percent"
        ),
        pytest.param(
            {"expert_sample_rows": 0},
            ValueError,
            "InspectConfig.expert_sample_rows must be an integer >= 1",
            id="rows",
        ),
        pytest.param(
            {"sample": 0.0},
            ValueError,
            "InspectConfig.sample must be a number in (0, 1] or None, got 0.0",
            id="sample-0",
        ),
        pytest.param({"sample": 1.5}, ValueError, "InspectConfig.sample", id="sample-over"),
        pytest.param(
            {"max_rows": 0},
            ValueError,
            "InspectConfig.max_rows must be an integer >= 1 or None",
            id="max-rows",
        ),
        pytest.param(
            {"read_ahead_rows": 0},
            ValueError,
            "InspectConfig.read_ahead_rows must be an integer >= 1 or None",
            id="read-ahead",
        ),
        pytest.param(
            {"stats_chunk_rows": 0},
            ValueError,
            "InspectConfig.stats_chunk_rows must be an integer >= 1",
            id="chunk",
        ),
        pytest.param(
            {"seed": -1}, ValueError, "InspectConfig.seed must be an integer in [0, 4294967295]", id="seed"
        ),
    ],
)
def test_inspect_config_refuses_values_out_of_range(kwargs, error, words) -> None:
    with pytest.raises(error) as exc:
        InspectConfig(**kwargs)
    assert words in _one_line(exc)


def test_cli_names_the_flag_of_a_refused_config_value(tmp_path) -> None:
    """`--sample 0` reaches InspectConfig (Typer does not range-check it): one line naming the flag, exit 2."""
    import pandas as pd
    import torch

    from mmoe_inspect.cli.main import app

    torch.manual_seed(0)
    features = [f"x{i}" for i in range(4)]
    pd.DataFrame(torch.randn(50, 4).numpy(), columns=features).to_parquet(tmp_path / "rows.parquet")
    torch.save(PlantedMMoE(4, n_experts=2, tasks=("ctr", "cvr")).eval(), tmp_path / "m.pt")
    args = ["--trust-checkpoint", "--data", str(tmp_path / "rows.parquet"), "--features", ",".join(features)]
    res = CliRunner().invoke(app, ["summary", str(tmp_path / "m.pt"), *args, "--sample", "0", "-q"])
    assert res.exit_code == 2, res.output
    assert "--sample" in res.output and "(0, 1]" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------------ the monitor
@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        pytest.param({"every": 0}, "every must be a positive int", id="every"),
        pytest.param({"stride": 5, "every": 2}, "stride must be an int in [1, every]", id="stride"),
        pytest.param(
            {"buffer_rows": 0}, "GateMonitor.buffer_rows must be an integer >= 1, got 0", id="buffer"
        ),
        pytest.param(
            {"start_step": -3}, "GateMonitor.start_step must be an integer >= 0, got -3", id="start"
        ),
    ],
)
def test_gate_monitor_refuses_bad_windows(kwargs, words) -> None:
    model = PlantedMMoE(4, n_experts=2, tasks=("ctr", "cvr"))
    with pytest.raises(ValueError) as exc:
        GateMonitor(model, **kwargs)
    assert words in _one_line(exc)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # nothing registered


def test_lightning_callback_refuses_an_unknown_stop_on_code() -> None:
    """A misspelt code in `stop_on` would never stop the run: refused with the close codes named."""
    from mmoe_inspect.monitor.lightning import GateMonitorCallback

    with pytest.raises(ValueError) as exc:
        GateMonitorCallback(stop_on=("colapsed_gate",))
    assert "did you mean 'collapsed_gate'" in _one_line(exc)
    assert GateMonitorCallback(stop_on=("collapsed_gate", "critical")).stop_on == {
        "collapsed_gate",
        "critical",
    }
