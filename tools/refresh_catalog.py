"""Refresh resources/catalog.json from the hub: each listed model's config facts, licence and gating.

    python tools/refresh_catalog.py                 (every model; needs a network)
    python tools/refresh_catalog.py --only Qwen/Qwen3-4B --dry-run
    python tools/refresh_catalog.py --add org/name --family "Name 1" --variant instruct

For every model it downloads config.json (gated models need a token with access: `hf auth login`)
and stores the facts as ``ModelShape.from_config`` reads them, so an estimate from the catalog
equals one from the downloaded config; the licence and gating come from the model's hub page. The
file is rewritten whole (temporary name, then renamed) and the changes are printed. A model that
cannot be read keeps its facts and is named at the end (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CATALOG = Path(__file__).resolve().parents[1] / "resources" / "catalog.json"


def facts(cfg: dict) -> dict:
    """The catalog's config keys, as the estimate reads them from ``cfg``."""
    from headtune.core.model.shape import ModelShape

    s = ModelShape.from_config(cfg)
    return {
        "model_type": s.model_type,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "vocab_size": s.vocab,
        "tie_word_embeddings": s.tied,
        "max_position_embeddings": s.max_positions,
    }


def refresh_one(row: dict) -> list[str]:
    """Update ``row`` in place from the hub; returns the changes as text."""
    from huggingface_hub import HfApi, hf_hub_download

    cfg = json.loads(Path(hf_hub_download(row["id"], "config.json")).read_text(encoding="utf-8"))
    new = facts(cfg)
    changes = [f"{k}: {row['config'].get(k)!r} -> {v!r}" for k, v in new.items() if row["config"].get(k) != v]
    row["config"] = new
    info = HfApi().model_info(row["id"])
    gated = bool(getattr(info, "gated", False))
    licence = (getattr(info, "card_data", None) or {}).get("license") if getattr(info, "card_data", None) else None
    if gated != row.get("gated"):
        changes.append(f"gated: {row.get('gated')!r} -> {gated!r}")
        row["gated"] = gated
    if licence and licence != row.get("licence"):
        changes.append(f"licence: {row.get('licence')!r} -> {licence!r}")
        row["licence"] = licence
    return changes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", type=Path, default=CATALOG, help="the file to refresh (default: the shipped one)")
    p.add_argument("--only", action="append", default=[], metavar="ID", help="refresh this model only (repeatable)")
    p.add_argument("--add", metavar="ID", help="add this hub model to the catalog")
    p.add_argument("--family", help="with --add: the family shown, e.g. 'Qwen3'")
    p.add_argument("--variant", choices=("base", "instruct"), help="with --add")
    p.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    args = p.parse_args(argv)
    doc = json.loads(args.catalog.read_text(encoding="utf-8"))
    if args.add:
        if not (args.family and args.variant):
            p.error("--add needs --family and --variant")
        if any(r["id"] == args.add for r in doc["models"]):
            p.error(f"{args.add} is already in the catalog")
        doc["models"].append(
            {
                "id": args.add,
                "family": args.family,
                "variant": args.variant,
                "licence": "",
                "gated": False,
                "config": {},
            }
        )
        args.only = [args.add]
    failed = []
    for row in doc["models"]:
        if args.only and row["id"] not in args.only:
            continue
        try:
            changes = refresh_one(row)
        except Exception as exc:  # keep going: one gated or renamed model does not stop the rest
            failed.append(f"{row['id']}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        print(f"{row['id']}: " + ("; ".join(changes) if changes else "unchanged"))
    if not args.dry_run:
        tmp = args.catalog.with_name(args.catalog.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, args.catalog)
    for line in failed:
        print(f"could not refresh {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
