"""What `pip install` gives a user: the installed package, its templates, its version and its types."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import dataplane
from dataplane.backends import BACKENDS
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


def _templates(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.j2")}


def test_templates_ship_with_the_package():
    """Every template of the checkout is where the package loads them from (under scripts/test:
    the installed wheel), in one folder per backend, and compiles through the package's loader."""
    shipped = _templates(TEMPLATES_DIR)
    assert shipped == _templates(ROOT / "templates")
    assert {"iptables/full.j2", "iptables/service.j2", "nftables/full.j2", "nftables/service.j2",
            "nftables/update.j2"} <= shipped
    assert {name.split("/")[0] for name in shipped} == set(BACKENDS)  # no template outside a backend's folder
    for name in shipped:
        assert template(name).render  # loadable through the package's loader


def test_version_is_written_once():
    assert metadata.version("kube-dataplane") == dataplane.__version__
    proc = subprocess.run([sys.executable, "-I", "-m", "dataplane", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dataplane {dataplane.__version__}"
    assert "version" not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("\n[")[0].replace(
        'dynamic = ["version"]', "")


def test_typed_marker():
    assert (PACKAGE / "py.typed").is_file()
