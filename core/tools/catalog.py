"""The model catalog: listed, cached and recently used models, with fit badges for a plan.

The rows are the curated list shipped with Headtune (``core/model/catalog.py``), the hub models
in the local Hugging Face cache, and the model folders used recently. Each row's badges say, for
the plan as it is set, whether the run fits the card in each embeddings variant: LoRA only, and
both matrices trained in every mode of the ``core.embeddings`` registry. A badge is
``core.estimate.estimate`` of that plan on that model: the same function ``headtune estimate``
runs, so ``Badge.overrides`` given to ``headtune estimate --set`` prints the same verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..embeddings import MODES
from ..errors import HeadtuneError
from ..estimate import GiB, ModelShape, estimate, read_model_config
from ..model.catalog import catalog_models
from ..model.sources import cached_hub_models, hub_weights_cached
from ..plan import Plan, plan_from_dict

# Rows a tokens-mode badge assumes when the plan lists none (a chat format's special tokens).
DEFAULT_TOKEN_ROWS = 256

SIZE_FILTERS: dict[str, tuple[float, float]] = {
    "any size": (0, math.inf),
    "under 1 B": (0, 1e9),
    "1-4 B": (1e9, 4e9),
    "4-9 B": (4e9, 9e9),
    "9 B and more": (9e9, math.inf),
}


@dataclass(frozen=True)
class Variant:
    """One way of training the embeddings and head, as plan keys set on top of the plan."""

    key: str
    label: str
    change: dict

    def overrides(self) -> list[str]:
        """The change as ``headtune estimate --set`` arguments."""
        out = []
        for k, v in self.change.items():
            text = "[" + ",".join(str(x) for x in v) + "]" if isinstance(v, list) else str(v).lower()
            out.append(f"{k}={text}")
        return out


def variants(plan: Plan) -> list[Variant]:
    """LoRA only, then both matrices in every embeddings mode (tokens: the plan's rows, or a
    default number of them when it lists none)."""
    # Listed rows belong to a row-wise mode only (a plan check says so): the others drop them.
    no_rows: dict = {"embeddings.token_ids": []} if plan.embeddings.token_ids else {}
    off = {"embeddings.train_embeddings": False, "embeddings.train_lm_head": False}
    out = [Variant("lora_only", "LoRA only", {**off, **no_rows})]
    for mode in MODES.values():
        change: dict = {
            "embeddings.train_embeddings": True,
            "embeddings.train_lm_head": True,
            "embeddings.mode": mode.name,
        }
        label = f"+ {mode.name}"
        if not mode.rows:
            change.update(no_rows)
        elif not (plan.embeddings.token_ids or plan.embeddings.new_tokens):
            change["embeddings.token_ids"] = list(range(DEFAULT_TOKEN_ROWS))
            label += f" ({DEFAULT_TOKEN_ROWS} rows)"
        out.append(Variant(mode.name, label, change))
    return out


def plan_variant(plan: Plan, variant: Variant) -> Plan:
    """``plan`` with the variant's keys set (not validated: a badge is only an estimate)."""
    data = plan.to_dict()
    for key, value in variant.change.items():
        section, leaf = key.split(".")
        data.setdefault(section, {})[leaf] = value
    return plan_from_dict(data, check=False)


@dataclass(frozen=True)
class Entry:
    """One row: ``name`` is what model.name_or_path gets."""

    name: str
    origin: str  # "catalog" | "cache" | "recent"
    family: str = ""
    variant: str = ""
    licence: str = ""
    gated: bool = False
    shape: ModelShape | None = None
    downloaded: bool = False  # the weights are on this computer (a cached hub model, a folder)
    problem: str = ""  # why there is no shape

    @property
    def params(self) -> int:
        return self.shape.total_params if self.shape is not None else 0

    @property
    def download_bytes(self) -> int:
        """What the weights take in 16-bit, the usual format on the hub (an approximation)."""
        return 2 * self.params

    def text(self) -> str:
        """What search matches against."""
        return " ".join((self.name, self.family, self.variant, self.licence, self.origin)).lower()


def list_entries(recent: Sequence[str] = ()) -> list[Entry]:
    """The curated list, then other cached hub models, then recently used folders (no network)."""
    out: list[Entry] = []
    seen: set[str] = set()
    for m in catalog_models():
        out.append(
            Entry(
                name=m.id,
                origin="catalog",
                family=m.family,
                variant=m.variant,
                licence=m.licence,
                gated=m.gated,
                shape=ModelShape.from_config(m.config),
                downloaded=hub_weights_cached(m.id),
            )
        )
        seen.add(m.id.lower())
    for repo in cached_hub_models():
        if repo.lower() not in seen:
            seen.add(repo.lower())
            out.append(_read_entry(repo, "cache", hub_weights_cached(repo)))
    for name in recent:
        if not name or name.lower() in seen:
            continue
        path = Path(name).expanduser()
        if path.is_dir() and (path / "config.json").is_file():
            seen.add(name.lower())
            out.append(_read_entry(name, "recent", True))
    return out


def _read_entry(name: str, origin: str, downloaded: bool) -> Entry:
    try:
        shape = ModelShape.from_config(read_model_config(name))
    except HeadtuneError as exc:
        return Entry(name=name, origin=origin, downloaded=downloaded, problem=str(exc))
    return Entry(name=name, origin=origin, family=shape.model_type, shape=shape, downloaded=downloaded)


@dataclass(frozen=True)
class Badge:
    """The estimate of one variant of the plan on one model: total bytes and fit on the card."""

    variant: Variant
    total_bytes: int
    fit: str | None  # "fits" | "tight" | "no"; None without a capacity

    @property
    def overrides(self) -> list[str]:
        return self.variant.overrides()

    def text(self) -> str:
        size = f"{self.total_bytes / GiB:.1f} GiB"
        if self.fit == "no":
            return f"needs {size}"
        if self.fit == "tight":
            return f"tight, {size}"
        return f"fits, {size}" if self.fit == "fits" else size


@dataclass
class Badges:
    """Badges of every row for one plan on one card."""

    variants: list[Variant]
    device: str
    capacity_bytes: int | None
    rows: dict[str, list[Badge]] = field(default_factory=dict)  # entry name -> one badge per variant

    def summary(self, name: str) -> str:
        """e.g. "LoRA only fits; + full needs 16.2 GiB; + tokens fits"."""
        parts = []
        for b in self.rows.get(name, []):
            verdict = {"fits": "fits", "tight": "fits tightly", "no": f"needs {b.total_bytes / GiB:.1f} GiB"}
            parts.append(f"{b.variant.label} {verdict.get(b.fit or '', f'{b.total_bytes / GiB:.1f} GiB')}")
        return "; ".join(parts)


def compute_badges(plan: Plan, entries: Iterable[Entry], device: str, capacity_bytes: int | None) -> Badges:
    """One badge per variant for every entry with a shape, from ``core.estimate.estimate``."""
    vs = variants(plan)
    plans = [plan_variant(plan, v) for v in vs]
    out = Badges(vs, device, capacity_bytes)
    for entry in entries:
        if entry.shape is None:
            continue
        row = []
        for v, p in zip(vs, plans):
            est = estimate(p, entry.shape, device, capacity_bytes or None, advise=False)
            row.append(Badge(v, est.total_bytes, est.fit))
        out.rows[entry.name] = row
    return out


def fit_filters(vs: Sequence[Variant]) -> dict[str, str | None]:
    """Label -> variant key a row must fit in ("" any variant, None no filter)."""
    return {"any fit": None, "fits some way": "", **{f"fits: {v.label}": v.key for v in vs}}


def filter_entries(
    entries: Iterable[Entry], badges: Badges | None, query: str = "", size: str = "any size", fit: str | None = None
) -> list[Entry]:
    """The entries matching every search word, the size range, and the fit wanted (see ``fit_filters``)."""
    words = query.lower().split()
    low, high = SIZE_FILTERS[size]
    out = []
    for e in entries:
        if any(w not in e.text() for w in words):
            continue
        if size != "any size" and not (e.shape is not None and low <= e.params < high):
            continue
        if fit is not None:
            row = badges.rows.get(e.name, []) if badges is not None else []
            ok = [b for b in row if b.fit in ("fits", "tight") and (fit == "" or b.variant.key == fit)]
            if not ok:
                continue
        out.append(e)
    return out
