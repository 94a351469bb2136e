"""The one jinja2 environment every backend renders with."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import jinja2


def _templates_dir() -> Path:
    """Where the templates are: the ``dataplane.templates`` package data of an installed
    wheel, which setuptools maps to the top-level ``templates/`` of a source checkout."""
    try:
        found = resources.files("dataplane.templates")
    except ModuleNotFoundError:  # a source tree run without installing
        return Path(__file__).resolve().parent.parent.parent / "templates"
    return Path(str(found))


TEMPLATES_DIR = _templates_dir()


@lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    """Strict (a missing variable is an error), deterministic, no autoescaping."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def template(name: str) -> jinja2.Template:
    """Load ``templates/<name>``, a path under the templates folder with one folder per backend
    (``"iptables/full.j2"``), compiled once per process."""
    return environment().get_template(name)
