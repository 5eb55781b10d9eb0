"""The brief's rules about the package's shape: a Qt-free core, installed under ``headtune``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QT_MODULES = ("PySide6", "pyqtgraph", "shiboken6", "PyQt5", "PyQt6", "headtune.gui")


def test_no_qt_import_anywhere_in_core():
    offenders = []
    for path in (ROOT / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith(QT_MODULES) and not _inside_gui_command(path, node):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, offenders


def _inside_gui_command(path: Path, node: ast.AST) -> bool:
    """The CLI's `gui` sub-command may import the window lazily; nothing else in core may."""
    if path.name != "cli.py":
        return False
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name == "_cmd_gui":
            return any(n is node or (getattr(n, "lineno", None) == node.lineno) for n in ast.walk(fn))
    return False


def test_importing_core_loads_no_qt():
    code = ("import sys; import headtune.core.cli, headtune.core.job, headtune.core.trainer, headtune.core.data, "
            "headtune.core.models, headtune.core.trained, headtune.core.demo; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_installed_as_one_import_package():
    import headtune.core
    import headtune.gui
    import headtune.resources
    assert Path(headtune.core.__file__).parent.name in ("core",)
    from importlib import resources
    assert resources.files("headtune.resources").joinpath("demo/demo_plan.yaml").is_file()
    assert resources.files("headtune.resources").joinpath("demo/demo_dataset.jsonl").is_file()
