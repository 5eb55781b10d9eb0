"""The system check (``headtune doctor``) and ``headtune --version``: complete and truthful here.

The report is compared with what torch, psutil, shutil and the package metadata say right now,
and the bitsandbytes checks run real 4-bit and 8-bit kernels on this machine's device. Broken
parts (bitsandbytes failing, wrong results, no GPU, small disks) are simulated only at the
boundary functions, to see that each becomes a problem with a fix.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import tomllib
import torch

from headtune.core import __version__
from headtune.core.cli import main
from headtune.core.tools import doctor

ROOT = Path(__file__).resolve().parents[2]
GiB = 1024**3


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("doctor") / "runs" / "not-yet"  # a run folder that does not exist yet
    return doctor.run_checks(out)


def test_report_is_complete_and_truthful_on_this_machine(report, tmp_path_factory):
    # Versions: every library, from its metadata.
    assert list(report.versions) == list(doctor.VERSION_KEYS)
    assert report.versions["headtune"] == __version__
    assert report.versions["python"] == platform.python_version()
    for dist in doctor.VERSION_KEYS[2:]:
        assert report.versions[dist] == md.version(dist)
    # GPU: what torch sees.
    assert [g.name for g in report.gpus] == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    gpu = report.check("GPU")
    if not torch.cuda.is_available():  # this development machine
        assert report.device == "cpu" and report.gpus == []
        assert gpu.status == "warning" and gpu.detail.startswith("No GPU") and "pytorch.org" in gpu.fix
        assert report.summary.startswith("No GPU")
        assert report.torch_build == ("cpu" if torch.version.cuda is None else f"CUDA {torch.version.cuda}")
    else:
        assert report.device == "cuda" and gpu.status == "ok"
        free, total = torch.cuda.mem_get_info(0)
        assert report.gpus[0].total_bytes == total
    # The real kernels passed on this device, and say how close they came to float32.
    for name in ("bitsandbytes 4-bit", "bitsandbytes 8-bit", "bitsandbytes 8-bit optimizer", "bf16"):
        check = report.check(name)
        assert check.status == "ok", check
        assert report.device in check.detail or (name == "bf16" and "CPU" in check.detail)
    assert re.search(r"\d+\.\d% off float32", report.check("bitsandbytes 4-bit").detail)
    # RAM and disk: measured now, compared with psutil and shutil (other processes move them a bit).
    vm = psutil.virtual_memory()
    assert report.ram_total_bytes == vm.total
    assert abs(report.ram_available_bytes - vm.available) < max(1 * GiB, 0.1 * vm.total)
    folder = Path(report.output_dir)
    assert folder.is_dir() and folder.name.startswith("doctor")  # runs/not-yet's nearest existing parent
    disk = shutil.disk_usage(folder)
    assert report.disk_total_bytes == disk.total and abs(report.disk_free_bytes - disk.free) < 3 * GiB
    assert report.check("RAM").status == ("ok" if vm.available >= doctor.LOW_RAM else "warning")
    assert f"{report.disk_free_bytes / GiB:.1f} GiB free" in report.check("disk").detail
    # Nothing failed on this machine, and every problem carries a fix.
    assert report.ok, report.to_text()
    assert all(c.fix for c in report.problems)


def test_text_and_json_forms_carry_everything(report):
    text = report.to_text()
    for c in report.checks:
        assert f"[{c.status}] {c.name}: {c.detail}" in text
    for c in report.problems:
        assert c.fix in text
    for k, v in report.versions.items():
        assert re.search(rf"^  {re.escape(k)}\s+{re.escape(v)}$", text, re.M)
    assert f"{report.ram_total_bytes / GiB:.1f} GiB" in text and report.output_dir in text
    if not report.gpus:
        assert "GPU: none found" in text and "No GPU" in text
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is True and d["summary"] == report.summary
    assert {c["name"] for c in d["checks"]} >= {
        "Python",
        "libraries",
        "GPU",
        "bitsandbytes 4-bit",
        "bitsandbytes 8-bit",
        "bf16",
        "RAM",
        "disk",
    }


def test_cpu_features_and_the_4bit_path_are_reported(report):
    """The CPU's features as /proc/cpuinfo states them, the kernel Headtune uses, and a real check
    of the packed kernel exactly where this CPU has it."""
    from headtune.core.model.cpu4bit import packed_kernel_available

    cpu = report.cpu
    assert set(cpu) >= {"arch", "avx2", "avx512", "avx512_bf16", "amx", "path"}
    flags = set()
    if Path("/proc/cpuinfo").is_file():
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith(("flags", "Features")))
        flags = set(line.split(":", 1)[1].split())
        assert cpu["avx2"] == ("avx2" in flags) and cpu["avx512"] == ("avx512f" in flags)
    assert cpu["avx512_bf16"] == packed_kernel_available() or "avx512_bf16" in flags
    text = report.to_text()
    assert "AVX-512 BF16 " + ("yes" if cpu["avx512_bf16"] else "no") in text and cpu["path"] in text
    names = {c.name for c in report.checks}
    if report.device == "cpu" and packed_kernel_available():
        assert report.check("bitsandbytes 4-bit packed").status == "ok"
        assert "packed AVX-512 BF16 kernel for layers whose shape fits" in cpu["path"]
    else:
        assert "bitsandbytes 4-bit packed" not in names


def test_quantised_matmuls_really_quantise():
    """A float32 fallback would be exact; a broken kernel far off. Real NF4 / int8 sit in between."""
    err4 = doctor.quantized_matmul_error(4, "cpu")
    err8 = doctor.quantized_matmul_error(8, "cpu")
    assert 0.02 < err4 < doctor.MAX_ERROR_4BIT
    assert 0.0005 < err8 < doctor.MAX_ERROR_8BIT
    doctor.optimizer_8bit_step("cpu")  # raises unless the states are 8-bit and the weights moved


def test_broken_bitsandbytes_is_an_error_with_a_fix(monkeypatch, capsys, tmp_path):
    from headtune.core.model.cpu4bit import packed_kernel_available

    def broken(bits, device, packed=False):
        if bits == 4:
            raise RuntimeError("CUDA Setup failed despite GPU being available")
        return 0.9  # 8-bit "works" but is wrong

    monkeypatch.setattr(doctor, "quantized_matmul_error", broken)
    r = doctor.run_checks(tmp_path)
    four, eight = r.check("bitsandbytes 4-bit"), r.check("bitsandbytes 8-bit")
    assert four.status == "error" and "CUDA Setup failed" in four.detail and "pip install" in four.fix
    assert eight.status == "error" and "wrong results (90.0% off" in eight.detail
    packed_check = r.device == "cpu" and packed_kernel_available()  # the packed 4-bit kernel fails too
    assert not r.ok and f"{2 + packed_check} error(s)" in r.summary
    assert main(["doctor", "--output", str(tmp_path)]) == 1  # the command fails with the same report
    out = capsys.readouterr().out
    assert "Problems and fixes" in out and "bitsandbytes 4-bit: Reinstall bitsandbytes" in out


def test_gpu_problems_each_have_a_fix():
    smi = doctor._check_gpu("cpu", [], ["NVIDIA GeForce RTX 3060"], "550.54")
    assert smi[0].status == "warning" and "RTX 3060 is present" in smi[0].detail and "cu124" in smi[0].fix
    no_device = doctor._check_gpu("CUDA 12.4", [], [], "550.54")
    assert no_device[0].status == "error" and "driver" in no_device[0].fix
    small = doctor.Gpu(0, "GTX 1050", 4 * GiB, 3 * GiB, "6.1", False)
    checks = {c.name: c for c in doctor._check_gpu("CUDA 12.4", [small], ["GTX 1050"], "550.54")}
    assert (
        checks["GPU"].status == "ok"
        and "GTX 1050 (4.0 GiB, 3.0 GiB free, compute capability 6.1)" in checks["GPU"].detail
    )
    assert checks["GPU memory"].status == "warning" and "4bit" in checks["GPU memory"].fix
    assert checks["GPU generation"].status == "warning"
    bf16 = doctor._check_bf16(torch, "cuda", [small])
    assert bf16.status == "warning" and "float16" in bf16.fix


def test_low_ram_and_disk_are_warnings_with_fixes(tmp_path):
    ram = doctor._check_ram(16 * GiB, 2 * GiB)
    assert ram.status == "warning" and "2.0 GiB available of 16.0 GiB" in ram.detail and ram.fix
    disk = doctor._check_disk(tmp_path, 3 * GiB)
    assert disk.status == "warning" and "3.0 GiB free" in disk.detail and "larger disk" in disk.fix
    assert doctor._check_disk(tmp_path, 50 * GiB).status == "ok"
    assert doctor.existing_folder(tmp_path / "a" / "b") == tmp_path.resolve()


def test_missing_or_old_libraries_are_errors(monkeypatch):
    found = {**doctor.versions(), "peft": "0.10.0", "bitsandbytes": "not installed"}
    check = doctor._check_libraries(found)
    assert check.status == "error"
    assert "not installed: bitsandbytes" in check.detail and "peft 0.10.0 (needs >=0.18)" in check.detail
    assert check.fix == "Install supported versions: pip install --upgrade bitsandbytes peft"
    assert doctor._check_libraries(
        {**found, "peft": "0.21.0", "bitsandbytes": "0.50.2", "transformers": "6.0.0"}
    ).detail.startswith("unsupported: transformers")


def test_minimum_versions_match_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", dep)
        pins[m.group(1).lower()] = m.group(2)
    for dist, (low, high) in doctor.REQUIREMENTS.items():
        assert f">={low}" in pins[dist], (dist, pins[dist])
        assert (f"<{high}" in pins[dist]) if high else "<" not in pins[dist]


@pytest.mark.slow
def test_doctor_json_from_the_command_line(tmp_path):
    """The real command in a fresh process: one JSON object, exit code from the verdict."""
    proc = subprocess.run(
        [sys.executable, "-m", "headtune.core.cli", "doctor", "--json", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    d = json.loads(proc.stdout)
    assert proc.returncode == (0 if d["ok"] else 1), proc.stderr
    assert d["output_dir"] == str(tmp_path.resolve()) and d["versions"]["torch"] == torch.__version__
    assert {c["name"]: c["status"] for c in d["checks"]}["bitsandbytes 8-bit"] == "ok"
    assert d["gpus"] == [] if not torch.cuda.is_available() else d["gpus"]


VERSION_LINE = re.compile(r"^(?P<name>[a-z]+) (?P<version>\S+)(?: \((?P<extra>[^)]+)\))?$")


def test_version_output_parses():
    proc = subprocess.run(
        [sys.executable, "-m", "headtune.core.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    parsed = {}
    for line in proc.stdout.strip().splitlines():
        m = VERSION_LINE.match(line)
        assert m, line
        parsed[m["name"]] = (m["version"], m["extra"])
    assert list(parsed) == list(doctor.VERSION_KEYS)
    assert parsed["headtune"] == (__version__, None) and parsed["python"][0] == platform.python_version()
    assert parsed["torch"] == (torch.__version__, "cpu" if torch.version.cuda is None else f"CUDA {torch.version.cuda}")
    for dist in ("transformers", "peft", "bitsandbytes", "datasets"):
        assert parsed[dist] == (md.version(dist), None)
