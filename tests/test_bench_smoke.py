"""scripts/bench still runs end to end (on a tiny cluster; the kernel parts when root can run them,
each in a fresh namespace of the bench's own): it cannot silently rot.

This checks that the benchmark works, not how fast anything is.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_runs_on_a_tiny_cluster_and_prints_a_table(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench"), "--sizes", "30,60", "--no-kernel", "--no-dataplane-rate",
         "--repeats", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert "services  backend" in table
    for size in ("30", "60"):
        for backend in ("iptables", "nftables"):
            assert any(line.split()[:2] == [size, backend] for line in table.splitlines()), table
    report = json.loads(out.read_text())
    # it measured the environment's package: under scripts/test, the installed wheel, not the checkout
    package = Path(report["meta"]["package"])
    if os.environ.get("DATAPLANE_TEST_INSTALLED") == "1":
        assert "site-packages" in package.parts and package != REPO / "dataplane", package
    assert {(row["services"], row["backend"]) for row in report["compile"]} == {
        (n, b) for n in (30, 60) for b in ("iptables", "nftables")}
    for row in report["compile"]:
        assert row["rules"] > row["services"] and row["output_bytes"] > 0
        assert row["cli_json"]["seconds"] > 0 and row["cli_yaml"]["seconds"] > 0
        assert row["cli_json"]["cpu_seconds"] > 0
        # the same cluster given as Pods: the slices derived from them give the same rules
        assert row["cli_pods"]["seconds"] > 0 and row["cli_pods"]["same_rules"] is True
        assert row["lib"]["lib_total"] >= row["lib"]["lib_compile"] > 0
    assert [a["services"] for a in report["allocate"]] == [30, 60]
    assert all(a[fmt]["output_bytes"] > 0 for a in report["allocate"] for fmt in ("yaml", "json"))
    # a one-endpoint update at every size, both backends
    assert {(r["services"], r["backend"]) for r in report["incremental"]} == {
        (n, b) for n in (30, 60) for b in ("iptables", "nftables")}
    assert all(r["kinds"] == ["partial"] for r in report["incremental"])
    # growth: the cost per added Service over the span 30 -> 60 for each measurement
    metrics = {(g["metric"], g["backend"]) for g in report["growth"]}
    for backend in ("iptables", "nftables"):
        for metric in ("compile slices JSON", "compile Pods JSON", "compile slices YAML", "update produced"):
            assert (metric, backend) in metrics
    assert ("allocate YAML", "-") in metrics
    assert all(g["sizes"] == [30, 60] and len(g["per_span"]) == 1 for g in report["growth"])
    assert "growth" in table and "30->60" in table

    # the tables can be printed again from the JSON
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "bench"), "--report", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "growth" in again.stdout and "30->60" in again.stdout and "allocate" in again.stdout


def _table_rows(text: str, title: str) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """The header cells and the rows (by services, backend) of the table whose header starts with ``title``
    (cells split on two or more spaces; the header's single-space names stay whole)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title + " "))
    head = re.split(r" {2,}", lines[start].strip())
    rows = {}
    for line in lines[start + 1:]:
        if not re.match(r" *[\d,]+  ", line):  # the notes under the table (or its end)
            break
        cells = re.split(r" {2,}", line.strip())
        rows[(cells[0], cells[1])] = cells
    return head, rows


def test_bench_incremental_kernel_columns(tmp_path, monkeypatch):
    """The incremental table's kernel columns. With a usable kernel (root; the bench's kernel parts
    run in fresh namespaces of their own), the nftables update is applied as the product applies it
    (one netlink batch: ``kernel update ms``) and with ``nft -f`` (``nft -f ms``), alternately in one
    namespace, and every update is in the kernel afterwards; without one, both say "-". Either way
    a report of the old format (``nft -f`` times in ``kernel_update_seconds``) prints its numbers
    under ``nft -f ms``."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benchlib.procs import can_use_kernel, iptables_tools

    usable = can_use_kernel() is None
    if os.geteuid() == 0:  # (the suite runs as root with the tools setup installs: the kernel branch must run)
        assert usable, can_use_kernel()
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench"), "--sizes", "40", "--no-yaml", "--no-allocate",
         "--no-dataplane-rate", "--repeats", "1", "--updates", "3", "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {r["backend"]: r for r in report["incremental"]}
    head, cells = _table_rows(proc.stdout, "incremental")
    assert head[8:10] == ["kernel update ms", "nft -f ms"], head
    nft_row, nft_cells = rows["nftables"], cells[("40", "nftables")]
    if usable:
        # twice --updates produced: half applied as one netlink batch each, half with nft -f
        assert len(nft_row["updates"]) == 6 and nft_row["kernel_updates_verified"] == 6
        assert nft_row["kernel_tool"] == "nft" and nft_row["kernel_update_path"] == "netlink"
        assert nft_row["kernel_update_fallbacks"] == 0
        assert len(nft_row["kernel_update_runs"]) == 3 and len(nft_row["kernel_update_nft_runs"]) == 3
        total = nft_row["kernel_update_seconds"]
        # each batch's translation and send are parts of its time, so their medians are too
        assert 0 < nft_row["kernel_update_compile_seconds"] < total
        assert 0 < nft_row["kernel_update_send_seconds"] < total < 10
        assert nft_row["kernel_update_messages"] > 0 and 0 < nft_row["kernel_update_nft_seconds"] < 10
        assert nft_cells[6] == "nft, netlink"
        assert nft_cells[8] == f"{total * 1e3:.1f}"
        assert nft_cells[9] == f"{nft_row['kernel_update_nft_seconds'] * 1e3:.1f}"
        ipt_row = rows["iptables"]
        if "iptables-legacy-restore" in iptables_tools():  # else the nf_tables tool: not applied by default
            assert ipt_row["kernel_update_path"] == ipt_row["kernel_tool"] == "iptables-legacy-restore"
            assert len(ipt_row["kernel_update_runs"]) == 3 and "kernel_update_nft_seconds" not in ipt_row
            assert cells[("40", "iptables")][8] == f"{ipt_row['kernel_update_seconds'] * 1e3:.1f}"
            assert cells[("40", "iptables")][9] == "-"
    else:
        assert any("kernel measurements skipped" in n for n in report["notes"])
        assert not any(k.startswith("kernel_") for k in nft_row)
        assert nft_cells[8:10] == ["-", "-"]

    # a report written before the netlink column: its nftables update times were nft -f's
    for key in [k for k in nft_row if k.startswith("kernel_")]:
        del nft_row[key]
    nft_row.update(kernel_tool="nft", kernel_full_seconds=0.25, kernel_update_seconds=0.125,
                   kernel_update_runs=[0.125])
    old = tmp_path / "old.json"
    old.write_text(json.dumps(report))
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "bench"), "--report", str(old)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    _, cells = _table_rows(again.stdout, "incremental")
    assert cells[("40", "nftables")][6:10] == ["nft", "0.25", "-", "125.0"]
