"""`dataplane allocate` with several processes (dataplane/parallel_allocate.py) prints exactly
what the serial command prints, raises what it raises, or leaves the input to it; and the
parts of a dump (dump.dump_part / join_parts) join to the whole dump, byte for byte."""
from __future__ import annotations

import copy
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import forkwork, parallel_allocate
from dataplane.controllers import allocation
from dataplane.controllers.allocation import allocate_cluster
from dataplane.dump import dump_objects, dump_part, join_parts, splittable
from dataplane.errors import DataplaneError
from dataplane.input.cluster import parse_cluster
from dataplane.input.loader import load_documents
from sharding_support import bench, docs_of

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"
SEED = 5


BENCH = bench()


# ------------------------------------------------------------------ parts of a dump

KEYS = st.one_of(st.sampled_from(["a", "kind", "yes", "1", "a: b", "#c", "key with space", "é", "", "x" * 130,
                                  "app.kubernetes.io/name", "- d", "'q'"]),
                 st.text(alphabet="ab :#'\"\n.é", max_size=8))
SCALARS = st.one_of(KEYS, st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(alphabet="abc ", min_size=70,
                                                                            max_size=100))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(KEYS, inner, max_size=3)), max_leaves=12)
COLLECTIONS = st.one_of(st.dictionaries(KEYS, VALUES, max_size=4), st.lists(VALUES, max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.lists(COLLECTIONS, min_size=2, max_size=6), st.data())
def test_parts_join_to_the_whole_dump(objects, data):
    cuts = sorted(data.draw(st.sets(st.integers(1, len(objects) - 1))))
    runs = list(zip([0, *cuts], [*cuts, len(objects)]))
    assert splittable(objects, "yaml") and splittable(objects, "json")
    for fmt in ("yaml", "json"):
        parts = [dump_part(objects[a:b], fmt, first=a == 0) for a, b in runs]
        assert join_parts(parts, fmt) == dump_objects(objects, fmt)


def test_what_cannot_be_split():
    assert not splittable([{"a": 1}], "json")  # one object is printed as itself, not in a List
    assert not splittable([{"a": 1}, "text"], "yaml")  # a scalar document changes the whole stream
    assert splittable([{"a": 1}, []], "yaml")
    with pytest.raises(ValueError):
        dump_part([], "yaml", first=True)


# ------------------------------------------------------------------ sharded allocate

def to_allocate(services: int, endpoints: int = 2) -> dict:
    """A bench cluster (a kind: List) whose Services mostly want values allocated: every third
    has no ClusterIP, NodePort Services lose their nodePorts, and some objects carry keys and
    values that the fast YAML writer leaves to PyYAML (quotes, line breaks, long text)."""
    cluster = BENCH.make_cluster(services, endpoints)
    for i, obj in enumerate(o for o in cluster["items"] if o["kind"] == "Service"):
        spec = obj["spec"]
        if i % 3 == 0 and spec.get("clusterIP") != "None":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        for port in spec["ports"]:
            port.pop("nodePort", None)
        spec.pop("healthCheckNodePort", None)
        if i % 7 == 0:
            obj["metadata"].setdefault("annotations", {}).update({
                "note: odd": "a # comment-like value", "multi": "line one\nline two", "é": "日本",
                "long": "word " * 30, "": "empty key", "x" * 130: "long key"})
    for obj in cluster["items"]:
        if obj["kind"] == "EndpointSlice" and obj["metadata"]["name"].endswith("a"):
            obj["metadata"].setdefault("annotations", {})["tab"] = "a\tb 'q' \"dq\""
    return cluster


def allocate_for(cluster):
    return allocate_cluster(cluster, seed=SEED)


def serial(docs, fmt):
    """(text, warnings) as the serial `dataplane allocate` prints them, or the error's lines."""
    try:
        parsed = parse_cluster(docs)
        result = allocate_for(parsed.cluster)
    except DataplaneError as e:
        return type(e).__name__, str(e)
    return dump_objects(allocation.fill_documents(docs, result), fmt), parsed.warnings


def sharded(docs, fmt, workers=2):
    """What allocate_sharded gives: None, (text, no warnings), or the error it raised."""
    try:
        got = parallel_allocate.allocate_sharded(docs, fmt, workers, allocate_for)
    except DataplaneError as e:
        return type(e).__name__, str(e)
    return None if got is None else (got[0], ())


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(parallel_allocate, "MIN_SERVICES_PER_SHARD", 1)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("workers", [2, 3])
def test_sharded_like_serial(small_shards, fmt, workers):
    docs = docs_of(to_allocate(40))
    got = sharded(docs, fmt, workers)
    assert got is not None  # the input is shared out
    assert got == serial(docs, fmt)
    assert "'note: odd': 'a # comment-like value'" in got[0] or fmt == "json"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_multi_document_yaml_like_serial(small_shards, tmp_path, fmt):
    """Objects as separate YAML documents (with comments), not one List; every process prints
    its documents with the right separators."""
    items = to_allocate(12)["items"]
    text = "# the cluster\n" + "".join(f"---\n# object {i}\n" + yaml.safe_dump(o, sort_keys=False)
                                       for i, o in enumerate(items))
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    docs = load_documents([str(path)])
    assert [d.unit for d in docs[:2]] == ["document", "document"]
    got = sharded(docs, fmt, 3)
    assert got is not None and got == serial(docs, fmt)


@pytest.mark.parametrize("case", sorted(CASES.glob("*.yaml")), ids=lambda c: c.stem)
def test_cases_sharded_like_serial_or_left_to_it(small_shards, case):
    docs = load_documents([str(case)])
    for fmt in ("yaml", "json"):
        got = sharded(docs, fmt, 3)
        assert got is None or got == serial(docs, fmt)


def _left_to_serial(docs) -> bool:
    return parallel_allocate.allocate_sharded(docs, "yaml", 3, allocate_for) is None


def test_what_needs_the_whole_input_is_left_to_the_serial_path(small_shards):
    base = to_allocate(20)
    assert not _left_to_serial(docs_of(base))
    assert _left_to_serial(docs_of(to_allocate(1)))  # one Service: nothing to share out

    bad = copy.deepcopy(base)  # a problem in the last shard only
    [o for o in bad["items"] if o["kind"] == "Service"][-1]["spec"]["ports"][0]["port"] = 70000
    assert _left_to_serial(docs_of(bad))
    assert serial(docs_of(bad), "yaml")[0] == "InputError"

    for warned in (copy.deepcopy(base), copy.deepcopy(base)):  # a warning in the last shard only
        last = [o for o in warned["items"] if o["kind"] == "Service"][-1]
        if "resourceVersion" in last["metadata"]:  # an unknown field (looked for when no API server wrote it)
            del last["metadata"]["resourceVersion"]
            last["spec"]["colour"] = "blue"
        else:  # a Service with a selector and no EndpointSlice: a check that spans objects
            warned["items"] = [o for o in warned["items"] if not (
                o["kind"] == "EndpointSlice" and o["metadata"]["labels"]["kubernetes.io/service-name"]
                == last["metadata"]["name"] and o["metadata"]["namespace"] == last["metadata"]["namespace"])]
        assert serial(docs_of(warned), "yaml")[1]
        assert _left_to_serial(docs_of(warned))

    dup = copy.deepcopy(base)  # two slices of one name, owned by Services in different shards
    slices = [o for o in dup["items"] if o["kind"] == "EndpointSlice"]
    slices[-1]["metadata"]["name"] = slices[0]["metadata"]["name"]
    slices[-1]["metadata"]["namespace"] = slices[0]["metadata"]["namespace"]
    assert _left_to_serial(docs_of(dup))

    for extra in (
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "e", "namespace": "default"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
         "spec": {"cidrs": ["10.96.0.0/12"]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4", "endpoints": [],
         "metadata": {"name": "nolabel", "namespace": "default"}},
    ):
        with_extra = copy.deepcopy(base)
        with_extra["items"].append(extra)
        assert _left_to_serial(docs_of(with_extra)), extra["kind"]


def test_allocation_errors_are_the_serial_paths(small_shards):
    """A ClusterIP asked for twice (Services in different shards) is the allocator's error, raised
    with the serial path's lines; nothing is printed."""
    cluster = to_allocate(20)
    services = [o for o in cluster["items"] if o["kind"] == "Service"]
    services[-1]["spec"]["clusterIP"] = services[1]["spec"]["clusterIP"]
    services[-1]["spec"]["clusterIPs"] = [services[1]["spec"]["clusterIP"]]
    docs = docs_of(cluster)
    got = sharded(docs, "yaml", 3)
    assert got[0] == "InputError" and services[-1]["metadata"]["name"] in got[1], got
    assert got == serial(docs, "yaml")


def test_a_worker_that_dies_after_validating_has_its_part_printed_by_the_parent(small_shards, monkeypatch):
    docs = docs_of(to_allocate(20))
    real = parallel_allocate._worker

    def dies_before_printing(*args):
        work = real(*args)

        def run(send):
            work(lambda value: send(value) if value[0] == "services" else os._exit(3))
        return run

    monkeypatch.setattr(parallel_allocate, "_worker", dies_before_printing)
    for fmt in ("yaml", "json"):
        got = sharded(docs, fmt, 3)
        assert got is not None and got == serial(docs, fmt)


def test_a_worker_that_dies_before_validating_sends_the_input_to_the_serial_path(small_shards, monkeypatch):
    monkeypatch.setattr(parallel_allocate, "_worker", lambda *a: lambda send: os._exit(3))
    assert _left_to_serial(docs_of(to_allocate(20)))


def test_an_object_changed_by_the_filling_is_printed_as_changed(small_shards, monkeypatch):
    """The workers print the objects that are not Services before the allocation is known; if
    the filling ever gave a new object for one, the parent prints the new one."""
    real = allocation.fill_documents

    def fill_also_a_node(docs, result):
        out = real(docs, result)
        for kind in ("EndpointSlice", "Node"):  # printed early by the parent, and by a worker
            i = next(i for i, d in enumerate(docs) if d.obj["kind"] == kind)
            out[i] = {**out[i], "metadata": {**out[i]["metadata"], "name": f"renamed-{kind}"}}
        return out

    monkeypatch.setattr(parallel_allocate, "fill_documents", fill_also_a_node)
    monkeypatch.setattr(allocation, "fill_documents", fill_also_a_node)
    docs = docs_of(to_allocate(20))
    assert len(parallel_allocate._chunks(docs, 2)) > 2
    got = sharded(docs, "yaml", 2)
    assert "name: renamed-EndpointSlice" in got[0] and "name: renamed-Node" in got[0]
    assert got == serial(docs, "yaml")


def _fill_also_a_slice_and_a_node(monkeypatch):
    """Make the filling give new objects for the first EndpointSlice and Node (it never does):
    what was printed of them before it must be printed again."""
    real = allocation.fill_documents

    def fill(docs, result):
        out = real(docs, result)
        for kind in ("EndpointSlice", "Node"):
            i = next(i for i, d in enumerate(docs) if d.obj["kind"] == kind)
            out[i] = {**out[i], "metadata": {**out[i]["metadata"], "name": f"renamed-{kind}"}}
        return out

    monkeypatch.setattr(parallel_allocate, "fill_documents", fill)
    monkeypatch.setattr(allocation, "fill_documents", fill)


def _printed_here(monkeypatch) -> list:
    """The runs this process prints through parallel_allocate._print, in order."""
    runs: list = []
    parent = os.getpid()
    real = parallel_allocate._print

    def record(objects, run, fmt):
        if os.getpid() == parent:
            runs.append(run)
        return real(objects, run, fmt)

    monkeypatch.setattr(parallel_allocate, "_print", record)
    return runs


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_the_parent_prints_while_it_waits_for_a_slow_worker(small_shards, monkeypatch, fmt):
    """The chunks are the parent's while the worker is late with its Services; what it printed
    before the filling and that the filling changed is printed again."""
    docs = docs_of(to_allocate(30))
    chunk_runs = [run for chunk in parallel_allocate._chunks(docs, 2) for run in chunk]
    go_r, go_w = os.pipe()  # the parent says when it has printed half the chunks' runs
    real = parallel_allocate._worker

    def slow(*args):
        work = real(*args)

        def run(send):
            select.select([go_r], [], [], 120)
            work(send)
        return run

    monkeypatch.setattr(parallel_allocate, "_worker", slow)
    _fill_also_a_slice_and_a_node(monkeypatch)
    printed = _printed_here(monkeypatch)
    real_print = parallel_allocate._print

    def print_then_say_go(objects, run, fmt):
        text = real_print(objects, run, fmt)
        if 2 * len(set(chunk_runs) & set(printed)) >= len(chunk_runs):
            os.write(go_w, b"g")
        return text

    monkeypatch.setattr(parallel_allocate, "_print", print_then_say_go)
    try:
        got = sharded(docs, fmt, 2)
    finally:
        os.close(go_r)
        os.close(go_w)
    assert 2 * len(set(chunk_runs) & set(printed)) >= len(chunk_runs)  # (half the chunks at least, by the parent)
    assert len(printed) > len(set(printed))  # and some twice
    assert got == serial(docs, fmt) and "renamed-EndpointSlice" in got[0] and "renamed-Node" in got[0]


def test_a_slow_parent_leaves_the_chunks_to_the_worker(small_shards, monkeypatch):
    """The worker takes every chunk while the parent validates; the parent prints again what the
    filling changed, and no chunk that the worker printed."""
    parent = os.getpid()
    real = parallel_allocate._validate
    started = []
    real_prefetch = forkwork.prefetch

    def prefetch(workers):
        started.extend(workers)
        real_prefetch(workers)

    def slow_in_the_parent(shard):
        if os.getpid() == parent:  # (until the worker has sent everything and exited)
            for worker in started:
                worker.reader.join(120)
        return real(shard)

    monkeypatch.setattr(forkwork, "prefetch", prefetch)
    monkeypatch.setattr(parallel_allocate, "_validate", slow_in_the_parent)
    _fill_also_a_slice_and_a_node(monkeypatch)
    printed = _printed_here(monkeypatch)
    docs = docs_of(to_allocate(30))
    got = sharded(docs, "yaml", 2)
    changed = {i for i, d in enumerate(docs) if d.obj["kind"] in ("EndpointSlice", "Node")}
    chunk_runs = [run for chunk in parallel_allocate._chunks(docs, 2)
                  for run in chunk]
    reprinted = [run for run in printed if run in chunk_runs]
    assert reprinted and all(any(start <= i < end for i in changed) for start, end in reprinted), reprinted
    assert got == serial(docs, "yaml") and "renamed-EndpointSlice" in got[0]


def test_the_dispenser_gives_each_number_once():
    count = parallel_allocate._Dispenser.MAX
    with parallel_allocate._Dispenser(count) as dispenser:
        def take_all(send):
            taken = []
            while (n := dispenser.take()) is not None:
                taken.append(n)
                time.sleep(0.0005)
            send(taken)

        workers = [forkwork.start(take_all) for _ in range(3)]
        try:
            mine = []
            while (n := dispenser.take()) is not None:
                mine.append(n)
                time.sleep(0.0005)
            theirs = [forkwork.receive(w) for w in workers]
        finally:
            forkwork.stop(workers)
    everything = mine + [n for taken in theirs for n in taken]
    assert sorted(everything) == list(range(count)) and all(t == sorted(t) for t in theirs)
    assert sum(1 for taken in theirs if taken) >= 1
    with pytest.raises(ValueError):
        parallel_allocate._Dispenser(count + 1)


def test_stopped_workers_are_reaped():
    def hello_then_sleep(send):
        send("hello")
        time.sleep(60)

    worker = forkwork.start(hello_then_sleep)
    assert forkwork.receive(worker) == "hello"
    forkwork.stop([worker])
    with pytest.raises(ChildProcessError):
        os.waitpid(worker.pid, os.WNOHANG)
    assert forkwork.receive(worker) is None


# ------------------------------------------------------------------ the command

def to_yaml(obj) -> str:
    """``obj`` as YAML, written by libyaml when it is there (the pure writer takes seconds here)."""
    return yaml.dump(obj, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-m", "dataplane", "allocate", "--seed", str(SEED), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """A cluster past MIN_SERVICES_PER_SHARD Services per process, as YAML (one List)."""
    path = tmp_path_factory.mktemp("large") / "cluster.yaml"
    path.write_text(to_yaml(to_allocate(2 * parallel_allocate.MIN_SERVICES_PER_SHARD + 30, 1)))
    return path


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_cli_prints_the_same_with_one_process_or_several(large, tmp_path, fmt):
    assert parallel_allocate.allocate_sharded(load_documents([str(large)]), fmt, 2, allocate_for) is not None
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"out-{jobs}.{fmt}"
        proc = _run("-f", str(large), "--format", fmt, "-j", jobs, "-o", str(out))
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0].count(b"clusterIP:" if fmt == "yaml" else b'"clusterIP":') >= 2 * 1000


def test_cli_error_in_a_large_cluster_names_it_and_writes_nothing(large, tmp_path):
    cluster = to_allocate(2 * parallel_allocate.MIN_SERVICES_PER_SHARD + 30, 1)
    last = [o for o in cluster["items"] if o["kind"] == "Service"][-1]  # in the second process's shard
    last["spec"]["ports"][0]["port"] = 70000
    bad = tmp_path / "bad.yaml"
    bad.write_text(to_yaml(cluster))
    out = tmp_path / "out.yaml"
    out.write_text("old\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(out)
    for jobs in ("1", "2"):
        proc = _run("-f", str(bad), "-j", jobs, "-o", str(link))
        assert proc.returncode == 1
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: {bad}: item ") and " of the List in document 1: " in lines[0]
        assert f"Service {last['metadata']['namespace']}/{last['metadata']['name']}: spec.ports[0].port: " \
               "Invalid value: 70000" in lines[0], lines[0]
        assert "Traceback" not in proc.stderr
        assert out.read_text() == "old\n" and link.is_symlink()


def test_cli_writes_through_a_fifo(large, tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received = tmp_path / "received"
    with open(received, "wb") as sink:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=sink)
        try:
            proc = _run("-f", str(large), "-j", "2", "-o", str(fifo))
        finally:
            reader.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert fifo.exists() and not fifo.is_file()
    assert received.read_text() == _run("-f", str(large), "-j", "1").stdout
