"""Issue 17: the watch-stream format and its incremental decoder (dataplane.agent.events)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.agent.durations import parse_duration
from dataplane.agent.events import (
    JSONStreamDecoder, StreamError, format_event, gone_status, is_watch_event, status_text, watch_event,
)
from dataplane.errors import UsageError

SERVICE = {"kind": "Service", "apiVersion": "v1",
           "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
           "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.96.0.1",
                    "selector": {"app": "web \"quoted\" \\ {braces} [brackets]"}}}


def test_format_is_kubectls():
    """kubectl's JSON printer: json.MarshalIndent with four spaces, WatchEvent's fields in struct order,
    the unstructured object's keys sorted (Go marshals maps so), a newline after each document."""
    text = format_event("ADDED", SERVICE)
    lines = text.splitlines()
    assert lines[:4] == ['{', '    "type": "ADDED",', '    "object": {', '        "apiVersion": "v1",']
    assert lines[4] == '        "kind": "Service",' and lines[-1] == "}" and text.endswith("}\n")
    assert json.loads(text) == {"type": "ADDED", "object": SERVICE}


def decode_in_pieces(data: bytes, cuts: list[int]) -> list:
    decoder = JSONStreamDecoder("s")
    values, last = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        values += decoder.feed(data[last:cut])
        last = cut
    decoder.finish()
    return values


EVENTS = [("ADDED", SERVICE), ("MODIFIED", {**SERVICE, "metadata": {**SERVICE["metadata"], "resourceVersion": "8"}}),
          ("BOOKMARK", {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}}),
          ("ERROR", gone_status("too old resource version: 1 (9)")), ("DELETED", SERVICE)]
STREAM = "".join(format_event(t, o) for t, o in EVENTS).encode()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_values_cut_anywhere_come_out_whole(cuts):
    values = decode_in_pieces(STREAM, cuts)
    assert [(v["type"], v["object"]) for v in values] == EVENTS


def test_compact_lines_and_unicode_split_inside_a_character():
    """The API server's own stream (one compact event per line) reads the same; a multi-byte
    character cut between two reads is decoded whole."""
    obj = {**SERVICE, "metadata": {**SERVICE["metadata"], "annotations": {"note": "naïve ☃"}}}
    data = (json.dumps({"type": "ADDED", "object": obj}, ensure_ascii=False) + "\n").encode() * 2
    cut = data.index("☃".encode()) + 1
    assert [v["object"] for v in decode_in_pieces(data, [cut])] == [obj, obj]


@pytest.mark.parametrize("data, message", [
    (b'{"type": "ADDED", "object": {}}\nnot json\n', "s: line 2: expected a JSON object, found 'n'"),
    (b'{"type": "ADDED",\n "object": {"a": tru}}', "s: line 2: cannot parse JSON: Expecting value"),
])
def test_garbage_is_one_line_naming_the_line(data, message):
    decoder = JSONStreamDecoder("s")
    with pytest.raises(StreamError) as err:
        decoder.feed(data)
    assert str(err.value).startswith(message)


def test_a_stream_cut_off_inside_a_value():
    decoder = JSONStreamDecoder("s")
    assert decoder.feed(b'{"type": "ADDED", "object": {"kind": "Se') == []
    with pytest.raises(StreamError, match="line 1: the stream ends inside a JSON value"):
        decoder.finish()


def test_watch_event_checks_the_shape():
    assert watch_event({"type": "ADDED", "object": SERVICE}, "svc", 3).where == "svc: event 3"
    assert not is_watch_event(SERVICE)
    with pytest.raises(StreamError, match=r'svc: event 2: type: Unsupported value: .*"ADDED", "MODIFIED"'):
        watch_event({"type": "CHANGED", "object": SERVICE}, "svc", 2)
    with pytest.raises(StreamError, match="svc: event 4: object: must be a mapping"):
        watch_event({"type": "ADDED", "object": [1]}, "svc", 4)
    assert status_text(gone_status("too old resource version: 1 (9)")) == \
        "410 Expired: too old resource version: 1 (9)"


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("500ms", 0.5), ("1m", 60.0), ("30", 30.0),
                                           ("1m30s", 90.0), ("1.5h", 5400.0), ("0", 0.0), ("250us", 0.00025)])
def test_durations_as_kube_proxy_takes_them(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-1s", "1d", "s", "", "1 s", "abc"])
def test_bad_durations_name_the_flag(text):
    with pytest.raises(UsageError, match="--sync-period: invalid duration"):
        parse_duration(text, flag="--sync-period")
