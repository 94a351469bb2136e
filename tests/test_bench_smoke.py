"""scripts/bench still runs end to end (on a tiny cluster, no kernel work): it cannot silently rot.

This checks that the benchmark works, not how fast anything is.
"""
from __future__ import annotations

import json
import os
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
