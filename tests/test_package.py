"""What `pip install` gives a user: the installed package, its templates, its version and its types."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import dataplane
from dataplane.backends._jinja import TEMPLATES_DIR, template

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(dataplane.__file__).resolve().parent


def test_the_suite_runs_the_installed_wheel():
    """scripts/test sets DATAPLANE_TEST_INSTALLED=1: then no module may come from the checkout."""
    if os.environ.get("DATAPLANE_TEST_INSTALLED") != "1":
        assert PACKAGE == ROOT / "dataplane"  # a developer's editable install
        return
    def installed(path: Path) -> bool:
        return "site-packages" in path.parts and path.resolve() not in (ROOT / "dataplane", ROOT / "templates")

    assert installed(PACKAGE), f"tests import the checkout ({PACKAGE}), not the installed wheel"
    assert installed(TEMPLATES_DIR), TEMPLATES_DIR
    proc = subprocess.run([sys.executable, "-I", "-c", "import dataplane; print(dataplane.__file__)"],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    assert installed(Path(proc.stdout.strip()).parent)


def test_templates_ship_with_the_package():
    names = {p.name for p in TEMPLATES_DIR.iterdir()}
    assert {"iptables.j2", "nftables.j2"} <= names
    assert template("nftables.j2").render  # loadable through the package's loader


def test_version_is_written_once():
    assert metadata.version("kube-dataplane") == dataplane.__version__
    proc = subprocess.run([sys.executable, "-I", "-m", "dataplane", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dataplane {dataplane.__version__}"
    assert "version" not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("\n[")[0].replace(
        'dynamic = ["version"]', "")


def test_typed_marker():
    assert (PACKAGE / "py.typed").is_file()
