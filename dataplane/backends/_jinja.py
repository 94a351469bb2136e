"""The one jinja2 environment every backend renders with."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"


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
    """Load ``templates/<name>`` (compiled once per process)."""
    return environment().get_template(name)
