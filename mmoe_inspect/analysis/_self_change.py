"""The findings and marks for a model that changed itself during inspection (see `recording.fingerprint`)
or whose eval-mode forward is random (`recording.determinism`)."""

from __future__ import annotations

from collections.abc import Sequence

from mmoe_inspect._text import cut
from mmoe_inspect.analysis import codes
from mmoe_inspect.analysis.findings import SEVERITY_ORDER, Finding
from mmoe_inspect.results import InspectionResult

TITLE = codes.REGISTRY[codes.MODEL_CHANGED_ITSELF].title


def mark_self_change(result: InspectionResult, changed: Sequence[str]) -> None:
    """Add the critical finding, `result.meta["unreliable"]` and a verdict that says it first."""
    if not changed:
        return
    names = cut(list(changed), 6)
    text = (
        f"{TITLE}: its forward changed {len(changed)} parameter(s)/buffer(s) ({names}), so each batch saw a "
        "different model and none of these numbers is reliable"
    )
    result.findings.append(
        Finding.of(
            codes.MODEL_CHANGED_ITSELF,
            "model",
            f"While mmoe-inspect ran its forward, the model wrote to {len(changed)} of its own parameters or "
            f"buffers ({names}). Every number here comes from a model that changed between batches: none is "
            "reliable, and the model is no longer as it was handed in.",
            "Find what forward writes (a counter, a running statistic updated in eval mode, an in-place "
            "update of a weight), make it skip that in eval mode, reload the model and inspect again.",
            {"changed_tensors": len(changed)},
        )
    )
    result.findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.code, f.subject))
    result.meta["unreliable"] = text
    result.verdict = f"Unreliable: {TITLE[0].lower()}{TITLE[1:]}. {result.verdict}"


def mark_nondeterministic(result: InspectionResult, variation: float) -> None:
    """Add the `nondeterministic_forward` warning when two eval-mode forwards on the same rows differed by
    `variation` (> 0; see `mmoe_inspect.recording.determinism`)."""
    if not variation > 0:
        return
    size = "NaN on one forward only" if variation == float("inf") else f"by up to {variation:.3g}"
    result.findings.append(
        Finding.of(
            codes.NONDETERMINISTIC_FORWARD,
            "model",
            f"Two eval-mode forwards of the model on the same rows gave different outputs ({size}): noise, "
            "dropout or sampling is left on in eval mode. Every routing statistic mixes the input's routing "
            "with that noise (input dependence overstates how the gates follow the rows, a uniform gate can "
            "look like a choosing one), and the model serves random scores.",
            "Make the noise depend on `self.training` (noisy top-k gating, `F.dropout(x, training=self.training)`), "
            "then inspect again.",
            {"max_output_difference": variation},
        )
    )
    result.findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.code, f.subject))
