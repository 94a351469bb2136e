"""Issue 17: `dataplane sync` sources (files, FIFOs, stdin; streams and snapshots) and its command line."""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import time

import pytest

from dataplane.agent.events import format_event
from dataplane.agent.sources import FileSource, Message

from test_sync_store import NODE, service

DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]


def drain(q: "queue.Queue[Message]", until: str = "ended", timeout: float = 10) -> list[Message]:
    out = []
    while True:
        msg = q.get(timeout=timeout)
        out.append(msg)
        if msg.kind == until:
            return out


def summary(msgs: list[Message]) -> list[str]:
    return [f"{m.kind} {m.event.type} {m.event.index}" if m.event else
            f"{m.kind} {m.index}" if m.kind == "object" else f"{m.kind} {m.text}".strip() for m in msgs]


def test_a_file_holding_a_watch_stream(tmp_path):
    path = tmp_path / "svc.json"
    path.write_text(format_event("ADDED", service("a", "10.96.0.1")) + format_event("DELETED", service("a", "10.96.0.1")))
    q: "queue.Queue[Message]" = queue.Queue()
    src = FileSource(str(path), q)
    assert not src.is_fifo
    src.start()
    msgs = drain(q)
    assert summary(msgs) == ["event ADDED 1", "event DELETED 2", "caught_up", "ended"]
    assert msgs[0].source == str(path) and msgs[0].event.where == f"{path}: event 1"
    # validated by the reading thread, so that the sync loop's thread only swaps objects
    assert msgs[0].parsed.value.name == "a" and msgs[1].parsed is None


def test_a_snapshot_is_a_relist(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n---\n- not a mapping\n---\n"
                    "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\n")
    q: "queue.Queue[Message]" = queue.Queue()
    FileSource(str(path), q).start()
    msgs = drain(q)
    assert summary(msgs) == [
        f"error {path}: document 2: a manifest document must be a mapping with apiVersion and kind, not a list "
        "(skipped)",
        "relist", "object 1", "object 3", "caught_up", "caught_up", "ended"]
    assert msgs[2].obj["kind"] == "Node" and msgs[2].unit == "document"


def test_a_fifo_is_read_again_after_each_writer_and_catches_up(tmp_path):
    path = tmp_path / "events"
    os.mkfifo(path)
    q: "queue.Queue[Message]" = queue.Queue()
    src = FileSource(str(path), q)
    assert src.is_fifo
    src.start()
    assert q.get(timeout=10).kind == "caught_up"  # nothing written yet: nothing to wait for
    for n in range(2):  # two writers one after the other
        with open(path, "w") as w:
            text = format_event("ADDED", service(f"s{n}", "10.96.0.1"))
            w.write(text[:50])
            w.flush()
            w.write(text[50:])
        msg = q.get(timeout=10)
        assert msg.kind == "event" and msg.event.index == n + 1 and msg.event.obj["metadata"]["name"] == f"s{n}"
    with open(path, "w") as w:  # after an ERROR the relist must be read before the source counts as caught up
        w.write(format_event("ERROR", {"kind": "Status", "code": 410}) + format_event("ADDED", service("x", "10.96.0.1")))
    assert summary([q.get(timeout=10) for _ in range(3)]) == ["event ERROR 3", "event ADDED 4", "caught_up"]
    time.sleep(0.2)
    assert q.empty()  # a FIFO never ends


def test_a_broken_stream_stops_with_one_line(tmp_path):
    path = tmp_path / "svc.json"
    path.write_text(format_event("ADDED", service("a", "10.96.0.1")) + "{\"type\": \"ADDED\", oops}\n")
    q: "queue.Queue[Message]" = queue.Queue()
    FileSource(str(path), q).start()
    msgs = drain(q)
    assert summary(msgs)[0] == "event ADDED 1"
    assert msgs[1].text.startswith(f"{path}: line 26: cannot parse JSON: Expecting property name")
    assert msgs[1].text.endswith(f"; no more is read from {path}")


def test_stdin(tmp_path):
    code = ("import queue, sys; from dataplane.agent.sources import FileSource; q = queue.Queue(); "
            "FileSource('-', q).start()\n"
            "while (m := q.get()).kind != 'ended': print(m.kind, m.source, m.event.type if m.event else '')")
    stream = format_event("ADDED", NODE) + format_event("MODIFIED", NODE)
    run = subprocess.run([sys.executable, "-I", "-c", code], input=stream, capture_output=True, text=True,
                         timeout=60)
    assert run.stdout.split("\n")[:3] == ["event <stdin> ADDED", "event <stdin> MODIFIED", "caught_up <stdin> "]


@pytest.mark.parametrize("args, message", [
    (["--node", "n", "--netns", "x"], "error: give at least one -f SOURCE, or --kubectl"),
    (["-f", "a", "--node", "n", "--netns", "x", "--min-sync-period", "1d"],
     "error: --min-sync-period: invalid duration '1d': use a number of seconds or a Go duration such as 500ms, "
     "1s, 1m30s"),
    (["-f", "a", "--node", "n", "--netns", "x", "--sync-period", "0s"],
     "error: --sync-period: must be greater than 0, not '0s'"),
    (["-f", "a", "--node", "n", "--netns", "x", "--kubeconfig", "k"], "error: --kubeconfig is used only with --kubectl"),
    (["-f", "a", "-f", "a", "--node", "n", "--netns", "x"], "error: a SOURCE was given more than once"),
    (["-f", "missing.json", "--node", "n", "--netns", "x"], "error: missing.json: cannot read: No such file or directory"),
])
def test_usage_errors_are_one_line(args, message, tmp_path):
    run = subprocess.run(DATAPLANE + ["sync", *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 1 and run.stderr.splitlines() == [message]


def test_help_names_every_flag_of_the_contract():
    run = subprocess.run(DATAPLANE + ["sync", "--help"], capture_output=True, text=True, timeout=60)
    for flag in ("-f SOURCE", "--node", "--netns", "--backend", "--ip-family {ipv4,ipv6,dual}", "--min-sync-period D",
                 "--sync-period D", "--kubectl", "--kubeconfig FILE", "--healthz-bind-address HOST:PORT"):
        assert flag in run.stdout
    assert "default 1s" in run.stdout and "default 30s" in run.stdout
