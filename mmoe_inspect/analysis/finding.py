"""`Finding`: one diagnosis about one subject, with the severity and title its code is registered with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import codes
from .codes import Severity

__all__ = ["Finding"]


@dataclass(frozen=True)
class Finding:
    """One diagnosis about one subject (a gate, an expert, a pair of tasks)."""

    code: str
    severity: Severity
    subject: str
    title: str
    message: str
    remedy: str
    evidence: dict[str, float | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(
        cls,
        code: str,
        subject: str,
        message: str,
        remedy: str,
        evidence: dict[str, float | str] | None = None,
    ) -> Finding:
        """A finding with the severity and title its code is registered with (`analysis.codes`)."""
        spec = codes.REGISTRY[code]
        return cls(code, spec.severity, subject, spec.title, message, remedy, dict(evidence or {}))
