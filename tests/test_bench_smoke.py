"""scripts/bench still runs end to end (on a tiny cluster, no kernel work): it cannot silently rot.

This checks that the benchmark works, not how fast anything is.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_runs_on_a_tiny_cluster_and_prints_a_table(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench"), "--sizes", "50", "--no-kernel", "--no-dataplane-rate",
         "--repeats", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert "services  backend" in table
    for backend in ("iptables", "nftables"):
        assert any(line.split()[:2] == ["50", backend] for line in table.splitlines()), table
    report = json.loads(out.read_text())
    rows = {row["backend"]: row for row in report["compile"]}
    assert set(rows) == {"iptables", "nftables"}
    for row in rows.values():
        assert row["services"] == 50 and row["rules"] > 50 and row["output_bytes"] > 0
        assert row["cli_json"]["seconds"] > 0 and row["cli_yaml"]["seconds"] > 0
        assert row["lib"]["lib_total"] >= row["lib"]["lib_compile"] > 0
    assert {r["backend"] for r in report["incremental"]} == {"iptables", "nftables"}
    assert all(r["kinds"] == ["partial"] for r in report["incremental"])
