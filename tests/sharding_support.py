"""What the tests of the sharded paths (test_parallel, test_parallel_pods, test_parallel_allocate)
share: the benchmark's cluster generator, the serial compile they are compared with, and
documents from a cluster dict."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from dataplane.compiler import compile_rules
from dataplane.controllers.endpointslices import with_derived_slices
from dataplane.errors import DataplaneError
from dataplane.input.cluster import parse_cluster
from dataplane.input.loader import Document, documents_from_text

ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=None)
def bench() -> ModuleType:
    """scripts/bench as a module (its synthetic cluster generator)."""
    loader = importlib.machinery.SourceFileLoader("bench", str(ROOT / "scripts" / "bench"))
    spec = importlib.util.spec_from_loader("bench", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def serial(docs, node, mode, family):
    """(text, warnings) of the serial path, as `dataplane compile` prints them (or the error's type)."""
    try:
        parsed = parse_cluster(docs)
        result = compile_rules(with_derived_slices(parsed.cluster), node, backend=mode, family=family)
    except DataplaneError as e:
        return type(e).__name__
    return result.text, (*parsed.warnings, *result.warnings)


def docs_of(cluster: dict) -> list[Document]:
    """The documents of ``cluster`` as the loader reads them from a JSON file."""
    docs, problems = documents_from_text(json.dumps(cluster), "cluster.json", json_hint=True)
    assert not problems
    return docs
