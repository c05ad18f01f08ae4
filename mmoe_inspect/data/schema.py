"""Feature schema: which data columns are dense floats and which are categorical ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class CategoricalFeature:
    """An integer id column in `[0, cardinality)`, fed to the model through an embedding of `embed_dim`."""

    name: str
    cardinality: int
    embed_dim: int = 8


@dataclass(frozen=True)
class FeatureSpec:
    """The model's input columns: dense float columns and categorical id columns, in model order."""

    dense: tuple[str, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()

    def __post_init__(self) -> None:
        """A name twice would feed one data column into two input slots: refused, naming it."""
        seen: set[object] = set()
        for name in self.names:
            try:
                if name in seen:
                    raise ValueError(
                        f"feature {str(name)[:80]!r} is named twice in the model's features (each input slot "
                        "needs its own column)"
                    )
                seen.add(name)
            except TypeError:  # an unhashable name: the type checks that follow name it
                return

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.dense) + tuple(c.name for c in self.categorical)

    @property
    def input_dim(self) -> int:
        """Width of the concatenated [dense, embeddings] vector the experts read."""
        return len(self.dense) + sum(c.embed_dim for c in self.categorical)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dense": list(self.dense),
            "categorical": [
                {"name": c.name, "cardinality": int(c.cardinality), "embed_dim": int(c.embed_dim)}
                for c in self.categorical
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            dense=tuple(data.get("dense", ())),
            categorical=tuple(CategoricalFeature(**c) for c in data.get("categorical", ())),
        )

    @classmethod
    def dense_only(cls, n: int, prefix: str = "x") -> FeatureSpec:
        return cls(dense=tuple(f"{prefix}{i}" for i in range(n)))

    @classmethod
    def infer(
        cls, frame: pd.DataFrame, labels: list[str] | tuple[str, ...], embed_dim: int = 8
    ) -> FeatureSpec:
        """Integer and category columns become categorical (cardinality = max id + 1); floats dense."""
        dense: list[str] = []
        cats: list[CategoricalFeature] = []
        for col in frame.columns:
            if col in labels:
                continue
            s = frame[col]
            if isinstance(s.dtype, pd.CategoricalDtype):
                cats.append(CategoricalFeature(str(col), len(s.cat.categories), embed_dim))
            elif pd.api.types.is_integer_dtype(s.dtype):
                cats.append(CategoricalFeature(str(col), int(s.max()) + 1 if len(s) else 1, embed_dim))
            elif pd.api.types.is_float_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
                dense.append(str(col))
        return cls(dense=tuple(dense), categorical=tuple(cats))
