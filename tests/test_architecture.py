"""The package's shape: layers kept by import contracts, a Qt-free core, one installed package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: core never imports gui or Qt (not even
    lazily), core's layers import downwards only, no sibling modules import each other in a cycle, and
    the product never imports the test models."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is part of the test dependencies"
    proc = subprocess.run([exe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 4


def test_importing_core_loads_no_qt():
    code = (
        "import sys; import headtune.core.cli, headtune.core.training.job, headtune.core.training.trainer, "
        "headtune.core.data.examples, headtune.core.model.sources, headtune.core.training.trained, "
        "headtune.core.tools.demo, headtune.core.tools.export, headtune.core.estimate; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_headless_sub_commands_do_not_load_qt():
    """The `headtune` program hands sub-commands to the core command line before Qt loads."""
    code = (
        "import sys; from headtune.gui.launcher import main; code = main(['estimate', '--demo', '--json']); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6')]; "
        "print('QT', bad, file=sys.stderr); sys.exit(3 if bad else code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"total_bytes"' in proc.stdout


def test_installed_as_one_import_package():
    import headtune.core
    import headtune.gui
    import headtune.resources

    assert Path(headtune.core.__file__).parent.name in ("core",)
    from importlib import resources

    assert resources.files("headtune.resources").joinpath("demo/demo_plan.yaml").is_file()
    assert resources.files("headtune.resources").joinpath("demo/demo_dataset.jsonl").is_file()
