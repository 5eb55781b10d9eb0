"""Linux desktop integration: lay out the .desktop file, AppStream metainfo and icons.

``install_share(share)`` writes the freedesktop layout under ``share`` (``applications/``,
``metainfo/``, ``icons/hicolor/<size>/apps/``); ``packaging/build`` puts one inside the bundle, and
``packaging/install-linux`` installs one for the user (``~/.local/share``) with ``Exec`` pointing at
the bundle. The app id is read from the package source, like the spec does.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
ICONS = ROOT / "resources" / "icons"


def _constant(name: str) -> str:
    tree = ast.parse((ROOT / "core" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return node.value.value
    raise LookupError(name)


APP_ID = _constant("APP_ID")
DESKTOP_FILE = PACKAGING / f"{APP_ID}.desktop"
METAINFO_FILE = PACKAGING / f"{APP_ID}.metainfo.xml"


def icon_pngs() -> dict[int, Path]:
    """{size: path} of the PNG renderings in resources/icons."""
    out = {}
    for path in ICONS.glob(f"{APP_ID}-*.png"):
        out[int(path.stem.rsplit("-", 1)[1])] = path
    return dict(sorted(out.items()))


def desktop_text(exec_prefix: str = "") -> str:
    """The .desktop file; with ``exec_prefix`` (a folder), Exec/TryExec name the program there."""
    text = DESKTOP_FILE.read_text(encoding="utf-8")
    if exec_prefix:
        program = str(Path(exec_prefix) / "headtune-gui")
        quoted = f'"{program}"' if " " in program else program
        text = re.sub(r"^Exec=headtune-gui", f"Exec={quoted}", text, flags=re.M)
        text = re.sub(r"^TryExec=headtune-gui", f"TryExec={program}", text, flags=re.M)
    return text


def install_share(share: Path, exec_prefix: str = "") -> list[Path]:
    """Write the desktop file, metainfo and icons under ``share``; returns the files written."""
    share = Path(share)
    written = []
    target = share / "applications" / DESKTOP_FILE.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(desktop_text(exec_prefix), encoding="utf-8")
    written.append(target)
    target = share / "metainfo" / METAINFO_FILE.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(METAINFO_FILE, target)
    written.append(target)
    svg = share / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg"
    svg.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ICONS / f"{APP_ID}.svg", svg)
    written.append(svg)
    for size, png in icon_pngs().items():
        target = share / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, target)
        written.append(target)
    return written
