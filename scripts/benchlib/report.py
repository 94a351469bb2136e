"""The benchmark's tables: times per size, growth (cost per added Service over each span of sizes,
so that a superlinear path shows as a rising row), allocation, updates and connection rates."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from .measure import value

# Growth metrics: (label, unit, scale, getter over a compile row / an incremental row / an allocate row).
Getter = Callable[[dict], Optional[float]]


def update_applied(row: dict) -> Optional[float]:
    """Seconds the kernel took to apply a one-endpoint update as the product applies it (nftables: one
    netlink batch; iptables: ``--noflush`` of the row's kernel tool), or None. Rows written before
    ``kernel_update_path`` existed applied nftables updates with ``nft -f``: None for them."""
    if "kernel_update_path" in row or row.get("kernel_tool") != "nft":
        return value(row, "kernel_update_seconds")
    return None


def update_applied_nft_file(row: dict) -> Optional[float]:
    """Seconds ``nft -f`` took to apply a one-endpoint update (alternating with the netlink batches in
    the same namespace), or None (iptables rows; not measured). Older rows: their nft update time."""
    if "kernel_update_path" in row:
        return value(row, "kernel_update_nft_seconds")
    return value(row, "kernel_update_seconds") if row.get("kernel_tool") == "nft" else None


COMPILE_METRICS: tuple[tuple[str, str, float, Getter], ...] = (
    ("compile slices JSON", "us/svc", 1e6, lambda r: value(r, "cli_json", "seconds")),
    ("compile Pods JSON", "us/svc", 1e6, lambda r: value(r, "cli_pods", "seconds")),
    ("compile slices YAML", "us/svc", 1e6, lambda r: value(r, "cli_yaml", "seconds")),
    ("compile slices JSON cpu", "us/svc", 1e6, lambda r: value(r, "cli_json", "cpu_seconds")),
    ("compile Pods JSON cpu", "us/svc", 1e6, lambda r: value(r, "cli_pods", "cpu_seconds")),
    ("library (no parse)", "us/svc", 1e6, lambda r: value(r, "lib", "lib_compile")),
    ("peak RSS (JSON)", "KiB/svc", 1024, lambda r: value(r, "cli_json", "maxrss_mib")),
    ("peak RSS (Pods)", "KiB/svc", 1024, lambda r: value(r, "cli_pods", "maxrss_mib")),
    ("kernel load", "us/svc", 1e6, lambda r: value(r, "kernel_load", "seconds")),
    ("kernel load legacy", "us/svc", 1e6, lambda r: value(r, "kernel_load_legacy", "seconds")),
    ("output", "bytes/svc", 1, lambda r: value(r, "output_bytes")),
)
UPDATE_METRICS: tuple[tuple[str, str, float, Getter], ...] = (
    ("update produced", "ns/svc", 1e9, lambda r: value(r, "update_seconds")),
    ("update applied", "ns/svc", 1e9, update_applied),
    ("update applied nft -f", "ns/svc", 1e9, update_applied_nft_file),
)
ALLOCATE_METRICS: tuple[tuple[str, str, float, Getter], ...] = (
    ("allocate YAML", "us/svc", 1e6, lambda r: value(r, "yaml", "seconds")),
    ("allocate JSON", "us/svc", 1e6, lambda r: value(r, "json", "seconds")),
    ("allocate YAML cpu", "us/svc", 1e6, lambda r: value(r, "yaml", "cpu_seconds")),
    ("peak RSS (allocate)", "KiB/svc", 1024, lambda r: value(r, "yaml", "maxrss_mib")),
)


def _spans(rows: list[dict], get: Getter, scale: float) -> list[Optional[float]]:
    """Cost per added Service between consecutive sizes (rows sorted by size), in ``scale`` units."""
    out: list[Optional[float]] = []
    for lo, hi in zip(rows, rows[1:]):
        a, b = get(lo), get(hi)
        out.append(None if a is None or b is None else (b - a) / (hi["services"] - lo["services"]) * scale)
    return out


def growth(report: dict) -> list[dict]:
    """Per metric (and backend), the cost per added Service over each span of sizes."""
    out = []
    groups: list[tuple[str, Sequence[tuple[str, str, float, Getter]], list[dict]]] = []
    for backend in report["meta"]["backends"]:
        groups.append((backend, COMPILE_METRICS, [r for r in report["compile"] if r["backend"] == backend]))
        groups.append((backend, UPDATE_METRICS, [r for r in report.get("incremental", []) if r["backend"] == backend]))
    groups.append(("-", ALLOCATE_METRICS, report.get("allocate", [])))
    for backend, metrics, rows in groups:
        rows = sorted(rows, key=lambda r: r["services"])
        if len(rows) < 2:
            continue
        sizes = [r["services"] for r in rows]
        for label, unit, scale, get in metrics:
            spans = _spans(rows, get, scale)
            if all(s is None for s in spans):
                continue
            out.append({"metric": label, "backend": backend, "unit": unit, "sizes": sizes, "per_span": spans})
    return out


def fmt_s(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _kernel_cell(k: Optional[dict]) -> str:
    if not k:
        return "-"
    if k.get("seconds") is None:
        return f">{k['timeout']:.0f}"
    return fmt_s(k["seconds"])


def _print_table(rows: list[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(str(c).rjust(w) if i > 1 or k else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def print_report(report: dict) -> None:
    """The tables on stdout."""
    rows = report["compile"]
    meta = report["meta"]
    print()
    print(f"kube-dataplane bench: {meta['cpus']} CPUs, Python {meta['python']}, "
          f"{meta['endpoints_per_service']} endpoints/Service; times in seconds (median of {meta['repeats']})")
    head = ("services", "backend", "cli json", "json cpu", "cli pods", "pods cpu", "cli yaml", "lib+parse",
            "lib-parse", "load", "parse", "plan", "render", "peak MiB", "pods MiB", "out MiB", "rules", "kernel",
            "legacy")
    table: list[Sequence[str]] = [head]
    for r in rows:
        lib = r["lib"]
        pods = r.get("cli_pods", {})
        table.append((
            f"{r['services']:,}", r["backend"], fmt_s(r["cli_json"]["seconds"]),
            fmt_s(r["cli_json"].get("cpu_seconds")),
            fmt_s(pods.get("seconds")) + ("" if pods.get("same_rules", True) else "*"), fmt_s(pods.get("cpu_seconds")),
            fmt_s(r.get("cli_yaml", {}).get("seconds")), fmt_s(lib["lib_total"]), fmt_s(lib["lib_compile"]),
            fmt_s(lib["load"]), fmt_s(lib["parse"]), fmt_s(lib["plan"]), fmt_s(lib["render"]),
            f"{r['cli_json']['maxrss_mib']:.0f}", f"{pods['maxrss_mib']:.0f}" if pods else "-",
            f"{r['output_bytes'] / 2**20:.1f}", f"{r['rules']:,}",
            _kernel_cell(r.get("kernel_load")), _kernel_cell(r.get("kernel_load_legacy")),
        ))
    _print_table(table)
    print("  cli = `dataplane compile` subprocess, wall clock, and its CPU time (user + system, workers included;"
          " json: slices,\n  pods: the same cluster with Pods instead of slices, * = rules differ from the slices');"
          " lib+parse = load+parse+derive+plan+render in-process,"
          " lib-parse = derive+plan+render;\n  peak = max RSS of the compile (summed over its worker processes); rules"
          " = iptables -A lines, nft rules + set/map elements;\n  kernel = nft -f / iptables-restore --noflush"
          f" ({meta['iptables']}) in a fresh netns, legacy = iptables-legacy-restore --noflush; >N: gave up after N s")
    if report.get("allocate"):
        print()
        table = [("allocate", "yaml s", "yaml cpu", "json s", "json cpu", "peak MiB", "yaml MiB", "compile s",
                  "compile cpu")]
        for r in report["allocate"]:
            compiles = [c["cli_json"] for c in rows if c["services"] == r["services"]]
            fastest = min(compiles, key=lambda c: c["seconds"]) if compiles else {}
            table.append((f"{r['services']:,}", fmt_s(r["yaml"]["seconds"]), fmt_s(r["yaml"].get("cpu_seconds")),
                          fmt_s(r["json"]["seconds"]), fmt_s(r["json"].get("cpu_seconds")),
                          f"{r['yaml']['maxrss_mib']:.0f}", f"{r['yaml']['output_bytes'] / 2**20:.1f}",
                          fmt_s(fastest.get("seconds")), fmt_s(fastest.get("cpu_seconds"))))
        _print_table(table)
        print("  `dataplane allocate` of the cluster with slices (every object printed), wall clock and CPU (user +"
              " system);\n  compile = the faster backend's `dataplane compile` of the same file (its workers' CPU"
              " included)")
    if report.get("incremental"):
        print()
        table = [("incremental", "backend", "full sync s", "update ms", "update bytes", "kind",
                  "kernel tool", "kernel full s", "kernel update ms", "nft -f ms", "1-rule ms", "1-jump ms")]
        fallbacks = False
        for r in sorted(report["incremental"], key=lambda r: (r["services"], r["backend"])):
            floor = r.get("kernel_floor", {})
            tool, path = r.get("kernel_tool", "-"), r.get("kernel_update_path")
            mark = "*" if r.get("kernel_update_fallbacks") else ""
            fallbacks = fallbacks or bool(mark)
            table.append((f"{r['services']:,}", r["backend"], fmt_s(r["full_sync_seconds"]),
                          f"{r['update_seconds'] * 1e3:.1f}", f"{r['update_bytes']:,.0f}", "/".join(r["kinds"]),
                          tool if path in (None, tool) else f"{tool}, {path}", fmt_s(r.get("kernel_full_seconds")),
                          _ms(update_applied(r)) + mark, _ms(update_applied_nft_file(r)),
                          _ms(floor.get("plain_seconds")), _ms(floor.get("jump_seconds"))))
        _print_table(table)
        print("  kernel full s = the full ruleset loaded first (nft -f / the iptables tool --noflush) in a fresh netns;"
              " kernel update ms =\n  each update applied as the product does: nftables one netlink batch"
              " (netns.apply_nftables_partial: translate + send),\n  iptables --noflush of the kernel tool; nft -f ms ="
              " nft -f of as many updates, alternating with the batches in the same netns;\n  1-rule / 1-jump ="
              " nft -f of one `add rule` without / with a goto into the loaded table: nft's cache load,\n  and the"
              " kernel's validation of every chain at commit (a floor for any nft -f update)")
        if fallbacks:
            print("  * some updates went through nft -f: the batch translation did not cover them")
    if report.get("growth"):
        print_growth(report["growth"])
    if report.get("rate"):
        print_rate(report["rate"])
    for note in report.get("notes", []):
        print(f"note: {note}")


def print_growth(rows: list[dict]) -> None:
    """Cost per added Service over each span: a row that rises from span to span grows superlinearly."""
    print()
    spans = max((r["sizes"] for r in rows), key=len)
    head = ("growth", "backend", "unit", *[f"{a:,}->{b:,}" for a, b in zip(spans, spans[1:])], "last/first")
    table: list[Sequence[str]] = [head]
    for r in rows:
        cells = [("-" if s is None else f"{s:,.0f}" if abs(s) >= 10 else f"{s:.2f}") for s in r["per_span"]]
        cells += ["-"] * (len(spans) - 1 - len(cells))
        first, last = r["per_span"][0], r["per_span"][-1]
        ratio = f"{last / first:.2f}" if first and last is not None and len(r["per_span"]) > 1 and first > 0 else "-"
        table.append((r["metric"], r["backend"], r["unit"], *cells, ratio))
    _print_table(table)
    print("  cost per added Service between two sizes (wall clock; cpu = user + system time of the process and its"
          " workers);\n  last/first near 1 = linear, well above 1 = superlinear")


def print_rate(rate: list[dict[str, Any]]) -> None:
    """New TCP connections per second through a ClusterIP, per backend and Service count."""
    print()
    sizes = sorted({r["services"] for r in rate})
    table = [("new TCP conns/s", *[f"{s:,} svc" for s in sizes], "loaded with", "zzz rule at")]
    for backend in sorted({r["backend"] for r in rate}):
        by = {r["services"]: r for r in rate if r["backend"] == backend}
        walk = [by[s]["kube_services_walk"] for s in sizes if s in by and by[s]["kube_services_walk"]]
        table.append((backend, *[f"{by[s]['conns_per_s']:,.0f}" if s in by else "-" for s in sizes],
                      ",".join(sorted({by[s]["tool"] for s in by})),
                      ", ".join(f"{w['position']}/{w['of']}" for w in walk) or "-"))
    _print_table(table)
