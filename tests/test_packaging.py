"""Desktop packaging: the .desktop file, AppStream metainfo, icons, notices and package data.

The files are checked structurally here (keys, ids, license, version, icons present), and by the
freedesktop validators (`desktop-file-validate` from desktop-file-utils, `appstreamcli validate`
from appstream) when they are installed. When one is missing, its test still runs the structural
check and says so with a warning (visible in pytest's summary) instead of skipping silently.
The frozen bundle itself is built and started by `packaging/smoke` (minutes; not in this run).
"""

from __future__ import annotations

import configparser
import importlib.util
import shutil
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from headtune.core import APP_ID, __version__

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
DESKTOP = PACKAGING / f"{APP_ID}.desktop"
METAINFO = PACKAGING / f"{APP_ID}.metainfo.xml"
ICON_SIZES = [16, 24, 32, 48, 64, 128, 256, 512]


def _load_desktop_module():
    """packaging/desktop.py (a build helper, not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("headtune_packaging_desktop", PACKAGING / "desktop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


desktop = _load_desktop_module()


def _validator(tool: str, package: str) -> str | None:
    path = shutil.which(tool)
    if path is None:
        warnings.warn(
            f"{tool} is not installed (Debian package {package}): only the structural check ran", stacklevel=2
        )
    return path


def _desktop_entry(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(text)
    assert parser.sections() == ["Desktop Entry"]
    return dict(parser["Desktop Entry"])


def test_app_id_is_one_constant():
    assert APP_ID == "io.github.headtune.Headtune" and desktop.APP_ID == APP_ID
    spec = (PACKAGING / "headtune.spec").read_text()
    assert 'CONSTANTS["__version__"], CONSTANTS["APP_ID"]' in spec  # the spec reads both from the package


def test_desktop_file_is_valid():
    entry = _desktop_entry(DESKTOP.read_text(encoding="utf-8"))
    assert entry["Type"] == "Application" and entry["Name"] == "Headtune"
    assert entry["Exec"].split()[0] == "headtune-gui" and entry["TryExec"] == "headtune-gui"
    assert entry["Icon"] == APP_ID and entry["Terminal"] == "false"
    assert entry["Categories"].endswith(";") and "Science" in entry["Categories"].split(";")
    for key in ("Comment", "GenericName", "Keywords"):
        assert entry[key]
    tool = _validator("desktop-file-validate", "desktop-file-utils")
    if tool:
        proc = subprocess.run([tool, str(DESKTOP)], capture_output=True, text=True)
        assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout + proc.stderr


def test_installed_desktop_file_points_at_the_bundle(tmp_path):
    bundle = tmp_path / "My Apps" / "headtune"
    written = desktop.install_share(tmp_path / "share", exec_prefix=str(bundle))
    installed = tmp_path / "share" / "applications" / f"{APP_ID}.desktop"
    entry = _desktop_entry(installed.read_text())
    assert entry["Exec"] == f'"{bundle}/headtune-gui" %f' and entry["TryExec"] == f"{bundle}/headtune-gui"
    assert (tmp_path / "share" / "metainfo" / f"{APP_ID}.metainfo.xml").read_bytes() == METAINFO.read_bytes()
    assert (tmp_path / "share" / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg").is_file()
    for size in ICON_SIZES:
        assert (tmp_path / "share" / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png").is_file()
    assert len(written) == 3 + len(ICON_SIZES)
    tool = shutil.which("desktop-file-validate")
    if tool:
        proc = subprocess.run([tool, str(installed)], capture_output=True, text=True)
        assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout


def test_metainfo_is_valid():
    root = ET.parse(METAINFO).getroot()
    assert root.tag == "component" and root.get("type") == "desktop-application"
    assert root.findtext("id") == APP_ID
    assert root.findtext("project_license") == "Apache-2.0" and root.findtext("metadata_license") == "CC0-1.0"
    assert root.findtext("name") == "Headtune" and root.findtext("summary")
    assert root.find("description/p") is not None
    launchable = root.find("launchable")
    assert launchable.get("type") == "desktop-id" and launchable.text == DESKTOP.name
    assert [r.get("version") for r in root.iterfind("releases/release")][0] == __version__
    assert {b.text for b in root.iterfind("provides/binary")} == {"headtune", "headtune-gui"}
    tool = _validator("appstreamcli", "appstream")
    if tool:
        proc = subprocess.run([tool, "validate", "--no-net", str(METAINFO)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_icons_are_package_resources():
    folder = resources.files("headtune.resources").joinpath("icons")
    svg = folder.joinpath(f"{APP_ID}.svg")
    root = ET.fromstring(svg.read_bytes())
    assert root.tag.endswith("svg") and root.get("viewBox") == "0 0 256 256"
    assert sorted(desktop.icon_pngs()) == ICON_SIZES
    for size in ICON_SIZES:
        data = folder.joinpath(f"{APP_ID}-{size}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (size, size)


def test_wheel_ships_every_module_and_the_icons(tmp_path):
    """pyproject.toml's packages and package-data: a built wheel holds every module of core and gui,
    the icons and the demo files."""
    src = tmp_path / "src"  # a copy, so building writes nothing into the working tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("core", "gui", "resources"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr and "setuptools" in proc.stderr:
        pytest.fail("setuptools is needed to build the wheel: " + proc.stderr[-500:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("headtune-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert f"headtune/resources/icons/{APP_ID}.svg" in names
    assert {f"headtune/resources/icons/{APP_ID}-{s}.png" for s in ICON_SIZES} <= names
    assert "headtune/resources/demo/demo_plan.yaml" in names
    modules = {
        f"headtune/{p.relative_to(ROOT).as_posix()}"
        for folder in ("core", "gui")
        for p in (ROOT / folder).rglob("*.py")
    }
    assert modules <= names, sorted(modules - names)


def test_notices_for_the_bundled_qt():
    licenses = PACKAGING / "licenses"
    notice = (licenses / "THIRD-PARTY-NOTICES.md").read_text()
    assert "GNU Lesser General Public License version 3" in notice and "dynamically linked" in notice
    assert (licenses / "LGPL-3.0.txt").read_text().lstrip().startswith("GNU LESSER GENERAL PUBLIC LICENSE")
    assert "GNU GENERAL PUBLIC LICENSE" in (licenses / "GPL-3.0.txt").read_text()[:200]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]


def test_frozen_window_runs_sub_commands_with_the_console_program(tmp_path, monkeypatch):
    """In the bundle the window (`headtune-gui`) starts training as `headtune train ...`: the
    console program next to it, since `headtune-gui` itself only opens the window."""
    from headtune.gui.workers import train_command

    for name in ("headtune", "headtune-gui"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "headtune-gui"))
    assert train_command(["train", "--events-json", "p.yaml"]) == [
        str(tmp_path / "headtune"),
        "train",
        "--events-json",
        "p.yaml",
    ]
    monkeypatch.setattr(sys, "executable", str(tmp_path / "headtune"))
    assert train_command(["train"])[0] == str(tmp_path / "headtune")
