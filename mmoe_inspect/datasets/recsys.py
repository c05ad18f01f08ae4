"""A small synthetic recommender log: user/item ids, context features, click, purchase and dwell.

Labels come from latent factors, so a model can learn them: click from a user·item affinity, user,
item, category and device biases and the dense context; purchase only after a click, from a
propensity that shares the click's latent score in proportion to `relatedness` (the rest is its own
user·item affinity and context); dwell (log watch time, NaN without a click) from the click score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmoe_inspect.data.schema import CategoricalFeature, FeatureSpec
from mmoe_inspect.topology.spec import TaskSpec

ATTRS_KEY = "mmoe_inspect.recsys"
"""`DataFrame.attrs` key under which `make_recsys` records the cardinalities it drew ids from."""

_LATENT = 8
_CALIBRATION_ROWS = 50_000


@dataclass(frozen=True)
class _World:
    """Fixed parameters of one generator seed: latent factors, biases and weights."""

    user_click: np.ndarray  # [n_users, LATENT]
    item_click: np.ndarray  # [n_items, LATENT]
    user_buy: np.ndarray  # [n_users, LATENT]
    item_buy: np.ndarray  # [n_items, LATENT]
    user_bias: np.ndarray  # [n_users]
    item_bias: np.ndarray  # [n_items]
    item_buy_bias: np.ndarray  # [n_items]
    item_category: np.ndarray  # [n_items]
    category_bias: np.ndarray  # [n_categories]
    device_bias: np.ndarray  # [n_devices]
    dense_click: np.ndarray  # [n_dense], unit norm
    dense_buy: np.ndarray  # [n_dense], unit norm

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        n_users: int,
        n_items: int,
        n_categories: int,
        n_devices: int,
        n_dense: int,
    ) -> _World:
        def unit(n: int) -> np.ndarray:
            v = rng.standard_normal(n)
            return v / np.linalg.norm(v)

        return cls(
            user_click=rng.standard_normal((n_users, _LATENT)),
            item_click=rng.standard_normal((n_items, _LATENT)),
            user_buy=rng.standard_normal((n_users, _LATENT)),
            item_buy=rng.standard_normal((n_items, _LATENT)),
            user_bias=rng.normal(0.0, 0.5, n_users),
            item_bias=rng.normal(0.0, 0.7, n_items),
            item_buy_bias=rng.normal(0.0, 0.5, n_items),
            item_category=rng.integers(0, n_categories, n_items),
            category_bias=rng.normal(0.0, 0.5, n_categories),
            device_bias=rng.normal(0.0, 0.3, n_devices),
            dense_click=unit(n_dense),
            dense_buy=unit(n_dense),
        )

    def rows(self, rng: np.random.Generator, n_rows: int) -> dict[str, np.ndarray]:
        """Ids, dense context `[n_rows, n_dense]` and the raw click / purchase scores of sampled rows."""
        user = rng.integers(0, len(self.user_bias), n_rows)
        item = rng.integers(0, len(self.item_bias), n_rows)
        device = rng.integers(0, len(self.device_bias), n_rows)
        dense = rng.standard_normal((n_rows, len(self.dense_click)))
        category = self.item_category[item]
        scale = 1.0 / np.sqrt(_LATENT)
        click = (
            0.9 * scale * np.einsum("nk,nk->n", self.user_click[user], self.item_click[item])
            + self.user_bias[user]
            + self.item_bias[item]
            + self.category_bias[category]
            + self.device_bias[device]
            + 0.8 * dense @ self.dense_click
            + 0.4 * dense[:, 0] * dense[:, 1]
        )
        buy = (
            0.9 * scale * np.einsum("nk,nk->n", self.user_buy[user], self.item_buy[item])
            + self.item_buy_bias[item]
            + 0.8 * dense @ self.dense_buy
        )
        return {
            "user": user,
            "item": item,
            "category": category,
            "device": device,
            "dense": dense,
            "click": click,
            "buy": buy,
        }


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _solve_offset(rate: float, probability_at: Callable[[float], np.ndarray]) -> float:
    """Offset b with mean(probability_at(b)) = rate, by bisection (the mean rises with b)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(np.mean(probability_at(mid))) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def make_recsys(
    n_rows: int,
    *,
    n_users: int = 2000,
    n_items: int = 500,
    n_categories: int = 20,
    n_devices: int = 4,
    n_dense: int = 8,
    relatedness: float = 0.7,
    click_rate: float = 0.2,
    purchase_rate: float = 0.02,
    seed: int = 0,
) -> pd.DataFrame:
    """Rows of a synthetic impression log.

    Columns: `user_id`, `item_id`, `category` (of the item), `device` (int64 ids), `d0..` (float32
    context), `click`, `purchase` (float32 0/1; purchases only among clicks) and `dwell` (float32 log
    watch time, NaN where there is no click). Intercepts are set so the expected rates are
    `click_rate` and `purchase_rate`. `relatedness` in [0, 1] is the weight of the (standardized)
    click score in the purchase-after-click propensity; the remainder, sqrt(1 - r^2), is its own.
    The cardinalities are recorded in `frame.attrs[ATTRS_KEY]` for `recsys_features`.
    """
    if not 0.0 <= relatedness <= 1.0:
        raise ValueError(f"relatedness must be in [0, 1], got {relatedness}")
    if n_dense < 2:
        raise ValueError(f"n_dense must be at least 2, got {n_dense}")
    if not 0.0 < purchase_rate < click_rate < 1.0:
        raise ValueError(f"need 0 < purchase_rate < click_rate < 1, got {purchase_rate}, {click_rate}")
    world = _World.draw(np.random.default_rng([seed, 0]), n_users, n_items, n_categories, n_devices, n_dense)

    # Standardize scores and solve intercepts on a fixed calibration sample: they depend on the seed only.
    calib = world.rows(np.random.default_rng([seed, 1]), _CALIBRATION_ROWS)
    moments = {k: (calib[k].mean(), calib[k].std()) for k in ("click", "buy")}

    def purchase_score(r: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        z_click = (r["click"] - moments["click"][0]) / moments["click"][1]
        z_buy = (r["buy"] - moments["buy"][0]) / moments["buy"][1]
        return z_click, 1.5 * (relatedness * z_click + np.sqrt(1.0 - relatedness**2) * z_buy)

    click_bias = _solve_offset(click_rate, lambda b: _sigmoid(calib["click"] + b))
    p_click_calib = _sigmoid(calib["click"] + click_bias)
    buy_calib = purchase_score(calib)[1]
    buy_bias = _solve_offset(purchase_rate, lambda b: p_click_calib * _sigmoid(buy_calib + b))

    r = world.rows(np.random.default_rng([seed, 2]), n_rows)
    labels = np.random.default_rng([seed, 3])
    z_click, buy = purchase_score(r)
    click = labels.random(n_rows) < _sigmoid(r["click"] + click_bias)
    purchase = click & (labels.random(n_rows) < _sigmoid(buy + buy_bias))
    dwell = 3.0 + 0.5 * z_click + 0.3 * r["dense"][:, -1] + labels.normal(0.0, 0.5, n_rows)

    frame = pd.DataFrame(
        {
            "user_id": r["user"].astype(np.int64),
            "item_id": r["item"].astype(np.int64),
            "category": r["category"].astype(np.int64),
            "device": r["device"].astype(np.int64),
            **{f"d{j}": r["dense"][:, j].astype(np.float32) for j in range(n_dense)},
            "click": click.astype(np.float32),
            "purchase": purchase.astype(np.float32),
            "dwell": np.where(click, dwell, np.nan).astype(np.float32),
        }
    )
    frame.attrs[ATTRS_KEY] = {
        "user_id": n_users,
        "item_id": n_items,
        "category": n_categories,
        "device": n_devices,
    }
    return frame


def recsys_tasks(*, dwell: bool = False) -> tuple[TaskSpec, ...]:
    """Binary `click` and `purchase`, plus the regression task `dwell` (NaN without a click) if asked."""
    tasks = (TaskSpec("click", "binary", output="click"), TaskSpec("purchase", "binary", output="purchase"))
    if dwell:
        tasks += (TaskSpec("dwell", "regression", output="dwell", probability=False),)
    return tasks


def recsys_features(frame: pd.DataFrame, *, embed_dim: int = 8) -> FeatureSpec:
    """Dense `d*` columns and the four id columns, with cardinalities from the generator's parameters.

    Read from `frame.attrs[ATTRS_KEY]` (set by `make_recsys`, kept by pandas slicing and parquet);
    without it, the generator's default sizes. Raises if an id in `frame` exceeds its cardinality.
    """
    defaults = {"user_id": 2000, "item_id": 500, "category": 20, "device": 4}
    sizes = {**defaults, **frame.attrs.get(ATTRS_KEY, {})}
    for name, size in sizes.items():
        if len(frame) and int(frame[name].max()) >= size:
            raise ValueError(f"{name} has ids up to {int(frame[name].max())}, above the cardinality {size}")
    dense = tuple(c for c in frame.columns if c.startswith("d") and c[1:].isdigit())
    return FeatureSpec(
        dense=dense,
        categorical=tuple(CategoricalFeature(name, int(size), embed_dim) for name, size in sizes.items()),
    )
