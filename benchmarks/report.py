"""From runs to figures: medians and spread over repeats, the largest N held, the ratios to the
best peer, the targets of issue 6; written as results.json, results.md and PNG plots."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HELD_DELIVERY = 0.999
HELD_P99_MS = 10.0
REFERENCE_N = 100
SUBJECT = "wirthforge"

METRICS: dict[str, str] = {
    "latency_p50_ms": "frame latency p50 (ms)",
    "latency_p99_ms": "frame latency p99 (ms)",
    "latency_max_ms": "frame latency max (ms)",
    "delivery": "delivery ratio",
    "delivery_min_client": "delivery of the worst client",
    "cpu_us_per_msg": "server CPU per message sent (µs)",
    "cpu_pct": "server CPU (% of one core)",
    "rss_per_conn_kb": "server RSS per connection (KiB)",
    "rss_mb": "server RSS with N connected (MiB)",
    "ping_p50_ms": "ping round trip p50 (ms)",
    "ping_p99_ms": "ping round trip p99 (ms)",
    "clock_lateness_p50_ms": "frame clock lateness p50 (ms, earliest receiver)",
    "clock_lateness_p99_ms": "frame clock lateness p99 (ms, earliest receiver)",
    "clock_jitter_ms": "frame clock jitter (ms, lateness p99 - p50)",
    "latency_user_p99_ms": "frame latency p99 at user-space receipt (ms)",
    "frames_missed_by_all": "frames no client received (skipped by the clock, or lost by all)",
    "msgs_per_s": "messages delivered per second",
    "heartbeat_interval_p50_ms": "heartbeat interval p50 per client (ms)",
    "heartbeat_interval_max_ms": "heartbeat interval max per client (ms)",
    "loadgen_cpu_pct": "load generator CPU (% of one core)",
    "loadgen_us_per_msg": "load generator CPU per message (µs)",
}
EXTRA_METRICS = ("rss_growth_kb", "stalled_rx_bytes_start", "stalled_rx_bytes_end")
TABLE_METRICS = (
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "delivery",
    "cpu_us_per_msg",
    "cpu_pct",
    "rss_per_conn_kb",
    "ping_p50_ms",
    "ping_p99_ms",
    "clock_lateness_p50_ms",
    "clock_jitter_ms",
    "frames_missed_by_all",
    "latency_user_p99_ms",
    "loadgen_cpu_pct",
)
COLOURS = {"wirthforge": "#d95f02", "fastapi": "#1b9e77", "websockets": "#7570b3"}


def stats(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Median and spread (min, max) over repeats; None when nothing was measured."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {
        "median": statistics.median(present),
        "min": min(present),
        "max": max(present),
        "n": len(present),
        "values": present,
    }


def _median(block: dict[str, Any] | None, metric: str) -> float | None:
    if not block or block.get(metric) is None:
        return None
    value: float = block[metric]["median"]
    return value


def summarise(
    results: list[dict[str, Any]], contenders: Sequence[str], clients: Sequence[int]
) -> dict[str, Any]:
    by_contender: dict[str, Any] = {}
    for contender in contenders:
        mine = [r for r in results if r["contender"] == contender and not r.get("failed")]
        entry: dict[str, Any] = {
            "failed_runs": sum(
                1 for r in results if r["contender"] == contender and r.get("failed")
            )
        }
        for scenario in ("fanout", "idle", "stall", "generation"):
            runs = [r for r in mine if r["scenario"] == scenario]
            if not runs:
                continue
            block: dict[str, Any] = {}
            for n in sorted({r["n"] for r in runs}):
                at_n = [r for r in runs if r["n"] == n]
                block[str(n)] = {
                    metric: stats([r.get(metric) for r in at_n])
                    for metric in (*METRICS, *EXTRA_METRICS)
                }
            entry[scenario] = block
        fanout = entry.get("fanout", {})
        held = {}
        for n in clients:
            block = fanout.get(str(n))
            delivery, p99 = _median(block, "delivery"), _median(block, "latency_p99_ms")
            held[str(n)] = (
                delivery is not None
                and p99 is not None
                and delivery >= HELD_DELIVERY
                and p99 < HELD_P99_MS
            )
        entry["held"] = held
        entry["largest_n_held"] = max((int(n) for n, ok in held.items() if ok), default=None)
        idle = fanout.get("1") or entry.get("idle", {}).get("1")
        entry["idle_cpu_pct"] = idle["cpu_pct"] if idle else None
        generation = entry.get("generation", {}).get("1")
        entry["generation_cpu_pct"] = {
            "off": idle["cpu_pct"] if idle else None,
            "on": generation["cpu_pct"] if generation else None,
        }
        entry["stall_effect"] = _stall_effect(entry)
        by_contender[contender] = entry
    summary: dict[str, Any] = {"by_contender": by_contender}
    summary["comparison"] = _comparison(by_contender, clients)
    summary["targets"] = _targets(by_contender, summary["comparison"])
    return summary


def _stall_effect(entry: dict[str, Any]) -> dict[str, Any] | None:
    stall = entry.get("stall")
    if not stall:
        return None
    n = next(iter(stall))
    with_stall = stall[n]
    baseline = entry.get("fanout", {}).get(n)
    if not baseline:
        return {"n": int(n), "baseline": None}
    effect: dict[str, Any] = {"n": int(n)}
    for metric in ("latency_p50_ms", "latency_p99_ms", "delivery"):
        base, stalled = baseline.get(metric), with_stall.get(metric)
        if base is None or stalled is None:
            continue
        effect[metric] = {
            "without": base["median"],
            "with": stalled["median"],
            "delta": stalled["median"] - base["median"],
            "noise": base["max"] - base["min"],
        }
    p99 = effect.get("latency_p99_ms")
    delivery = effect.get("delivery")
    if p99 is None or delivery is None:
        effect["verdict"] = "not measured"
    elif baseline["latency_p99_ms"]["n"] < 2:
        effect["verdict"] = "undetermined (one repeat: no noise estimate)"
    else:
        ok = p99["delta"] <= p99["noise"] and delivery["delta"] >= -max(delivery["noise"], 0.001)
        effect["verdict"] = "within noise" if ok else "measurable cost"
    rx = with_stall.get("stalled_rx_bytes_end")
    effect["stalled_rx_bytes"] = rx["median"] if rx else None
    growth = with_stall.get("rss_growth_kb")
    effect["rss_growth_kb_during_window"] = growth["median"] if growth else None
    return effect


def _best(
    by_contender: dict[str, Any], peers: Sequence[str], value_of: Any, lower_is_better: bool
) -> tuple[str | None, float | None]:
    candidates = [(p, value_of(by_contender[p])) for p in peers]
    candidates = [(p, v) for p, v in candidates if v is not None]
    if not candidates:
        return None, None
    pick = min if lower_is_better else max
    return pick(candidates, key=lambda pv: pv[1])


def _comparison(by_contender: dict[str, Any], clients: Sequence[int]) -> dict[str, Any]:
    if SUBJECT not in by_contender:
        return {}
    peers = [c for c in by_contender if c != SUBJECT]
    below = [n for n in clients if n <= REFERENCE_N]
    ref_n = str(REFERENCE_N if REFERENCE_N in clients else (max(below) if below else min(clients)))
    rows: dict[str, Any] = {"reference_n": int(ref_n)}

    def at(n: str, metric: str) -> Any:
        return lambda entry: _median(entry.get("fanout", {}).get(n), metric)

    specs = [
        ("cpu_us_per_msg", at(ref_n, "cpu_us_per_msg"), True, f"CPU µs per message at N={ref_n}"),
        ("largest_n_held", lambda e: e.get("largest_n_held"), False, "largest N held"),
        ("latency_p50_ms_n1", at("1", "latency_p50_ms"), True, "latency p50 with 1 client"),
        ("latency_p99_ms_n1", at("1", "latency_p99_ms"), True, "latency p99 with 1 client"),
        (
            "latency_p99_ms_ref",
            at(ref_n, "latency_p99_ms"),
            True,
            f"latency p99 at N={ref_n}",
        ),
        ("ping_p50_ms_ref", at(ref_n, "ping_p50_ms"), True, f"ping p50 at N={ref_n}"),
        (
            "rss_per_conn_kb_ref",
            at(ref_n, "rss_per_conn_kb"),
            True,
            f"RSS per connection at N={ref_n}",
        ),
        (
            "idle_cpu_pct",
            lambda e: e["idle_cpu_pct"]["median"] if e.get("idle_cpu_pct") else None,
            True,
            "idle CPU with 1 client",
        ),
    ]
    for key, value_of, lower, label in specs:
        mine = value_of(by_contender[SUBJECT])
        peer, best = _best(by_contender, peers, value_of, lower)
        ratio = None
        if mine is not None and best not in (None, 0):
            ratio = mine / best
        rows[key] = {
            "label": label,
            "wirthforge": mine,
            "best_peer": peer,
            "best_peer_value": best,
            "ratio": ratio,
            "lower_is_better": lower,
        }
    return rows


def _targets(by_contender: dict[str, Any], comparison: dict[str, Any]) -> list[dict[str, Any]]:
    if SUBJECT not in by_contender or not comparison:
        return []
    me = by_contender[SUBJECT]
    targets: list[dict[str, Any]] = []

    def add(name: str, value: Any, met: bool | None) -> None:
        targets.append({"target": name, "value": value, "met": met})

    cpu = comparison["cpu_us_per_msg"]
    add(
        f"CPU per message ≤ best peer at N={comparison['reference_n']}",
        cpu["ratio"],
        None if cpu["ratio"] is None else cpu["ratio"] <= 1.0,
    )
    held = comparison["largest_n_held"]
    add(
        "largest N held ≥ best peer",
        [held["wirthforge"], held["best_peer_value"]],
        None
        if held["best_peer_value"] is None
        else (held["wirthforge"] or 0) >= held["best_peer_value"],
    )
    one = me.get("fanout", {}).get("1")
    p50, p99 = _median(one, "latency_p50_ms"), _median(one, "latency_p99_ms")
    add("1 client: p50 ≤ 0.3 ms", p50, None if p50 is None else p50 <= 0.3)
    add("1 client: p99 ≤ 1 ms", p99, None if p99 is None else p99 <= 1.0)
    idle = me["idle_cpu_pct"]["median"] if me.get("idle_cpu_pct") else None
    add("idle CPU with 1 client < 2 % of a core", idle, None if idle is None else idle < 2.0)
    stall = me.get("stall_effect") or {}
    verdict = stall.get("verdict")
    add(
        "a stalled client costs the others nothing measurable",
        verdict,
        None if verdict not in ("within noise", "measurable cost") else verdict == "within noise",
    )
    return targets


# -- output --------------------------------------------------------------------------------------


def write_json(
    path: Path,
    meta: dict[str, Any],
    results: list[dict[str, Any]],
    *,
    summary: dict[str, Any] | None = None,
    partial: bool = False,
) -> None:
    document = {"meta": meta, "partial": partial, "runs": results, "summary": summary}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def _cell(block: dict[str, Any] | None, metric: str) -> str:
    s = block.get(metric) if block else None
    if not s:
        return "-"
    if metric.startswith("delivery"):
        med, lo, hi = (100 * s[k] for k in ("median", "min", "max"))
        text = f"{med:.2f} %"
        return text if s["n"] < 2 else f"{text} ({lo:.2f}-{hi:.2f})"
    text = _fmt(s["median"])
    return text if s["n"] < 2 else f"{text} ({_fmt(s['min'])}-{_fmt(s['max'])})"


def write_markdown(path: Path, meta: dict[str, Any], summary: dict[str, Any]) -> None:
    by = summary["by_contender"]
    contenders = list(by)
    machine = meta["machine"]
    options = meta["options"]
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `python -m benchmarks.run` on {meta['date']}"
        + (f", commit `{meta['commit'][:12]}`" if meta.get("commit") else "")
        + ". Method: [README.md](README.md). Raw figures: `results.json`.",
        "",
        f"- Machine: {machine['cpu'] or 'unknown CPU'}, {machine['cpus']} CPU(s), "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, "
        f"{machine['implementation']} {machine['python']}; load average at start "
        f"{machine['loadavg_at_start']}.",
        f"- Runs: N = {', '.join(map(str, options['clients']))}; {options['seconds']:g} s windows "
        f"after {options['warmup']:g} s warm-up; {options['repeats']} repeat(s), interleaved; "
        f"cells are median (min-max over repeats).",
        "- Pinning: "
        + (
            f"server on CPU {options['server_cpus']}, load generator(s) on CPU "
            f"{options['load_cpus']}"
            if options["pin"]
            else "none"
        )
        + f"; {options['loadgen_procs']} load generator process(es); "
        f"ping {options['ping_hz']:g}/s"
        + ("" if options.get("answer_heartbeats", True) else "; heartbeats left unanswered")
        + ".",
        "- Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v is not None)
        + ".",
    ]
    if meta.get("interrupted"):
        lines += ["", "**The run was interrupted: these figures are partial.**"]
    comparison = summary.get("comparison") or {}
    if comparison:
        lines += [
            "",
            "## wirthforge against the best peer",
            "",
            "| figure | wirthforge | best peer | ratio (wirthforge / peer) |",
            "|---|---|---|---|",
        ]
        for key, row in comparison.items():
            if key == "reference_n":
                continue
            peer = (
                f"{_fmt(row['best_peer_value'])} ({row['best_peer']})" if row["best_peer"] else "-"
            )
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
            lines.append(f"| {row['label']} | {_fmt(row['wirthforge'])} | {peer} | {ratio} |")
    if summary.get("targets"):
        lines += ["", "## Targets (issue 6)", "", "| target | value | met |", "|---|---|---|"]
        for t in summary["targets"]:
            value = t["value"]
            shown = " vs ".join(_fmt(v) for v in value) if isinstance(value, list) else _fmt(value)
            lines.append(f"| {t['target']} | {shown} | {_fmt(t['met'])} |")
    lines += [
        "",
        f"## Largest N held (median delivery ≥ {100 * HELD_DELIVERY:g} % and p99 < "
        f"{HELD_P99_MS:g} ms)",
        "",
        "| contender | largest N held | held at |",
        "|---|---|---|",
    ]
    for c in contenders:
        held = ", ".join(f"{n}: {'yes' if ok else 'no'}" for n, ok in by[c]["held"].items())
        lines.append(f"| {c} | {_fmt(by[c]['largest_n_held'])} | {held} |")
    clients = [str(n) for n in options["clients"]]
    for metric in TABLE_METRICS:
        lines += [
            "",
            f"## {METRICS[metric]}",
            "",
            "| N | " + " | ".join(contenders) + " |",
            "|---|" + "---|" * len(contenders),
        ]
        for n in clients:
            cells = [_cell(by[c].get("fanout", {}).get(n), metric) for c in contenders]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Idle CPU and generation",
        "",
        "One client, frames flowing, no generation (idle), and with a generation always running "
        "(wirthforge only: the peers have no model).",
        "",
        "| contender | idle CPU (% of a core) | generation on (% of a core) |",
        "|---|---|---|",
    ]
    for c in contenders:
        gen = by[c]["generation_cpu_pct"]
        lines.append(
            f"| {c} | {_cell({'x': gen['off']}, 'x')} | "
            f"{_cell({'x': gen['on']}, 'x') if gen['on'] else 'n/a'} |"
        )
    stall_rows = [(c, by[c].get("stall_effect")) for c in contenders if by[c].get("stall_effect")]
    if stall_rows:
        n = stall_rows[0][1]["n"]
        lines += [
            "",
            f"## A stalled client costs the others? (N={n}, {options['stalled']} stalled clients)",
            "",
            "Normal clients' figures with the stalled clients beside them, against the same N "
            "without (noise: the spread of the run without, over repeats).",
            "",
            "| contender | p50 without → with (ms) | p99 without → with (ms) | delta p99 | noise "
            "| delivery with | stalled backlog (bytes) | RSS growth in window (KiB) | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c, e in stall_rows:
            p50, p99, dl = e.get("latency_p50_ms"), e.get("latency_p99_ms"), e.get("delivery")
            if not (p50 and p99 and dl):
                lines.append(f"| {c} | - | - | - | - | - | - | - | {e.get('verdict', '-')} |")
                continue
            lines.append(
                f"| {c} | {_fmt(p50['without'])} → {_fmt(p50['with'])} | {_fmt(p99['without'])} → "
                f"{_fmt(p99['with'])} | {p99['delta']:+.2f} | {_fmt(p99['noise'])} | "
                f"{100 * dl['with']:.2f} % | {_fmt(e.get('stalled_rx_bytes'))} | "
                f"{_fmt(e.get('rss_growth_kb_during_window'))} | {e['verdict']} |"
            )
    failed = {c: by[c]["failed_runs"] for c in contenders if by[c]["failed_runs"]}
    if failed:
        lines += ["", f"**Failed runs** (see `results.json`): {failed}"]
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def write_plots(
    out: Path, summary: dict[str, Any], contenders: Sequence[str], clients: Sequence[int]
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = summary["by_contender"]

    def series(c: str, metric: str, scale: float = 1.0) -> tuple[list[int], list[float], Any]:
        xs, ys, lo, hi = [], [], [], []
        for n in clients:
            s = by[c].get("fanout", {}).get(str(n), {}).get(metric)
            if s:
                xs.append(n)
                ys.append(s["median"] * scale)
                lo.append((s["median"] - s["min"]) * scale)
                hi.append((s["max"] - s["median"]) * scale)
        return xs, ys, [lo, hi]

    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for c in contenders:
        for metric, style, label in (
            ("latency_p50_ms", "-o", "p50"),
            ("latency_p99_ms", "--s", "p99"),
        ):
            xs, ys, err = series(c, metric)
            if xs:
                ax.errorbar(
                    xs, ys, yerr=err, fmt=style, color=COLOURS.get(c), capsize=3,
                    label=f"{c} {label}",
                )  # fmt: skip
    ax.axhline(HELD_P99_MS, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clients (N)")
    ax.set_ylabel("frame latency (ms): due time → arrival")
    ax.set_title("Frame latency vs N (median of repeats, bars: min-max)")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    fig.savefig(out / "latency.png")
    plt.close(fig)
    written.append("latency.png")

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for c in contenders:
        xs, ys, err = series(c, "delivery", 100.0)
        if xs:
            ax.errorbar(xs, ys, yerr=err, fmt="-o", color=COLOURS.get(c), capsize=3, label=c)
    ax.axhline(100 * HELD_DELIVERY, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("clients (N)")
    ax.set_ylabel("frames delivered / frames due (%)")
    ax.set_title("Delivery vs N")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    fig.savefig(out / "delivery.png")
    plt.close(fig)
    written.append("delivery.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5), dpi=110)
    for c in contenders:
        xs, ys, err = series(c, "cpu_us_per_msg")
        if xs:
            left.errorbar(xs, ys, yerr=err, fmt="-o", color=COLOURS.get(c), capsize=3, label=c)
        xs, ys, err = series(c, "cpu_pct")
        if xs:
            right.errorbar(xs, ys, yerr=err, fmt="-o", color=COLOURS.get(c), capsize=3, label=c)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("clients (N)")
    left.set_ylabel("server CPU per message sent (µs)")
    left.set_title("CPU per message")
    right.set_xscale("log")
    right.set_xlabel("clients (N)")
    right.set_ylabel("server CPU (% of one core)")
    right.set_title("CPU load")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    fig.savefig(out / "cpu.png")
    plt.close(fig)
    written.append("cpu.png")
    return written
