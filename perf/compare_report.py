"""The figures of perf/compare.py: per run, per case (medians), ratios, targets, tables, chart.

Nothing here runs a benchmark. A run's figures come from the two JSON reports of its peers
(perf/peers.py): rate = messages received / (end - sender start); CPU us/msg per process =
CPU seconds / messages sent; a case keeps the median of its runs' figures. Ratios compare
cases of the same body size and settle mode ("combo"); where amqscale ran with several worker
counts, the faster one is the one compared (its worker count is recorded with the ratios).
Targets are computed from those ratios, never written in.
"""

from __future__ import annotations

import base64
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SCHEMA = "amqscale-perf-compare/1"
PERCENTILES = {"p50_us": 50.0, "p99_us": 99.0, "p99_9_us": 99.9, "max_us": 100.0}

TARGETS = {
    "worker_cpu": 1 / 15,  # amqscale worker CPU/msg vs proton-python process CPU/msg
    "messages_rate": 8.0,  # Message objects vs proton-python, rate
    "bytes_rate": 12.0,  # bytes vs proton-python, rate
    "bytes_pct_of_limit": 40.0,  # bytes vs the engine's limit, %
    "handover_bytes_us": 1.0,  # user process CPU per message, bytes
    "handover_messages_us": 3.0,  # user process CPU per message, Message id + 3 properties
    "rabbitmq_rate": 2.0,  # amqscale vs proton-python through RabbitMQ
    "latency_p99_us": 1000.0,  # at half the measured peak
    "tls_rate": 8.0,  # amqscale bytes over TLS vs proton-python over TLS, rate
}


def mode_name(presettled: bool) -> str:
    return "presettled" if presettled else "at-least-once"


def case_id(path: str, family: str, size: int, mode: str, workers: int = 0) -> str:
    label = "C-example-body" if family == "c-examples" else f"{size}B"
    return f"{path}/{family}{f'/w{workers}' if workers else ''}/{label}/{mode}"


def settings_dict(settings: Any) -> dict[str, Any]:
    return {
        "quick": settings.quick, "runs": settings.runs, "warmup": settings.warmup,
        "count": settings.count, "scale": settings.scale,
        "latency_seconds": settings.latency_seconds, "groups": settings.groups,
        "sizes": settings.sizes, "modes": [mode_name(m) for m in settings.modes],
        "workers": settings.workers,
    }


# ---- one run --------------------------------------------------------------------------------


def run_figures(count: int, raw: dict[str, Any]) -> dict[str, Any]:
    """Rate, CPU per message per process, losses: from the sender's and receiver's reports."""
    sent, got = raw["sender"], raw["receiver"]
    start = sent["start"]
    end = max(got.get("last", 0.0), sent.get("last", 0.0))
    seconds = end - start if start and end > start else 0.0
    received = int(got.get("count", 0))
    per_msg = 1e6 / count
    cpu: dict[str, float] = {"sender": sent["cpu_process"] * per_msg}
    for i, seconds_w in enumerate(sent.get("cpu_workers", [])):
        cpu[f"sender worker {i + 1}"] = seconds_w * per_msg
    cpu["receiver"] = got["cpu_process"] * per_msg
    for i, seconds_w in enumerate(got.get("cpu_workers", [])):
        cpu[f"receiver worker {i + 1}"] = seconds_w * per_msg
    if raw.get("broker_cpu") is not None:
        cpu["broker"] = raw["broker_cpu"] * per_msg
    errors = [e for e in (sent.get("error"), got.get("error")) if e]
    figures: dict[str, Any] = {
        "count": count,
        "settled_at_sender": int(sent.get("count", 0)),
        "accepted": int(sent.get("accepted", 0)),
        "other_outcomes": int(sent.get("other_outcomes", 0)),
        "received": received,
        "lost": count - int(got.get("unique", 0)),
        "duplicates": int(got.get("duplicates", 0)),
        "seconds": seconds,
        "msg_per_s": received / seconds if seconds > 0 else 0.0,
        "cpu_us_per_msg": cpu,
        "cpu_us_per_msg_total": sum(cpu.values()),
        "user_us_per_msg": {"sender": cpu["sender"], "receiver": cpu["receiver"]},
        # The user process less the harness's own work (bodies, bookkeeping): the library's.
        "library_us_per_msg": {
            side: (report["cpu_process"] - report["cpu_own"]) * per_msg
            for side, report in (("sender", sent), ("receiver", got))
            if report.get("cpu_own") is not None},
        "workers_us_per_msg": {
            "sender": sum(sent.get("cpu_workers", [])) * per_msg,
            "receiver": sum(got.get("cpu_workers", [])) * per_msg,
        },
        "error": "; ".join(errors) or None,
    }
    if got.get("histogram"):
        figures["histogram"] = got["histogram"]
        figures["latency"] = percentiles(decode_histograms([got["histogram"]]))
    return figures


def decode_histograms(encoded: Iterable[str]) -> Any:
    """One HdrHistogram (microseconds) holding every encoded histogram given."""
    from hdrh.histogram import HdrHistogram

    merged = HdrHistogram(1, 60_000_000, 3)
    for text in encoded:
        merged.add(HdrHistogram.decode(base64.b64decode(text)))
    return merged


def percentiles(histogram: Any) -> dict[str, float]:
    figures = {name: float(histogram.get_value_at_percentile(q))
               for name, q in PERCENTILES.items()}
    figures["count"] = histogram.get_total_count()
    return figures


def one_line(name: str, figures: dict[str, Any]) -> str:
    if figures.get("error"):
        return f"{name}: ERROR {figures['error']}"
    return (f"{name}: {figures['msg_per_s']:,.0f} msg/s, "
            f"{figures['cpu_us_per_msg_total']:.1f} us CPU/msg, "
            f"lost {figures['lost']}, duplicates {figures['duplicates']}")


def latency_line(figures: dict[str, Any]) -> str:
    if figures.get("error") or "latency" not in figures:
        return f"ERROR {figures.get('error') or 'no histogram'}"
    lat = figures["latency"]
    return (f"p50 {lat['p50_us']:,.0f} us, p99 {lat['p99_us']:,.0f} us, "
            f"p99.9 {lat['p99_9_us']:,.0f} us ({figures['msg_per_s']:,.0f} msg/s achieved)")


# ---- a case: medians of its runs ------------------------------------------------------------


def _median_of(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(get(r) for r in runs)


def _median_dict(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    names: list[str] = []
    for run in runs:
        names += [n for n in run.get(key, {}) if n not in names]
    return {n: statistics.median(r[key].get(n, 0.0) for r in runs) for n in names}


def summarize(entry: dict[str, Any]) -> None:
    """Add the case's medians (over runs without errors) and its summed losses."""
    runs = entry["runs"]
    good = [r for r in runs if not r.get("error")]
    entry["runs_ok"] = len(good)
    entry["errors"] = [r["error"] for r in runs if r.get("error")]
    entry["lost"] = sum(r.get("lost", 0) for r in good)
    entry["duplicates"] = sum(r.get("duplicates", 0) for r in good)
    if not good:
        entry["msg_per_s"] = None
        return
    entry["msg_per_s"] = _median_of(good, lambda r: r["msg_per_s"])
    entry["cpu_us_per_msg"] = _median_dict(good, "cpu_us_per_msg")
    entry["cpu_us_per_msg_total"] = _median_of(good, lambda r: r["cpu_us_per_msg_total"])
    entry["user_us_per_msg"] = _median_dict(good, "user_us_per_msg")
    entry["library_us_per_msg"] = _median_dict(good, "library_us_per_msg")
    entry["workers_us_per_msg"] = _median_dict(good, "workers_us_per_msg")


def summarize_latency(entry: dict[str, Any]) -> None:
    """Merge the latency runs' histograms: p50/p99/p99.9/max over every message."""
    runs = [r for r in entry.get("latency_runs", []) if r.get("histogram")]
    if not runs:
        entry["latency"] = None
        return
    merged = decode_histograms(r["histogram"] for r in runs)
    entry["latency"] = {
        "target_rate": runs[0]["target_rate"],
        "achieved_msg_per_s": statistics.median(r["msg_per_s"] for r in runs),
        "runs": len(runs),
        "lost": sum(r["lost"] for r in runs),
        **percentiles(merged),
        "histogram": base64.b64encode(merged.encode()).decode(),
    }


# ---- ratios ---------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _combos(document: dict[str, Any]) -> list[tuple[int, str]]:
    settings = document["settings"]
    return [(size, mode) for size in settings["sizes"] for mode in settings["modes"]]


class Lookup:
    """Cases of a document by (path, family, size, mode, workers)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.cases = document["cases"]
        self.workers = document["settings"]["workers"]

    def get(self, path: str, family: str, size: int, mode: str,
            workers: int = 0) -> dict[str, Any] | None:
        case = self.cases.get(case_id(path, family, size, mode, workers))
        return case if case and case.get("msg_per_s") else None

    def best(self, path: str, family: str, size: int, mode: str) -> dict[str, Any] | None:
        """The faster of amqscale's worker counts."""
        found = [c for w in self.workers if (c := self.get(path, family, size, mode, w))]
        return max(found, key=lambda c: c["msg_per_s"]) if found else None


def _rate(case: dict[str, Any] | None) -> float | None:
    return case["msg_per_s"] if case else None


def _cpu_total(case: dict[str, Any] | None) -> float | None:
    return case["cpu_us_per_msg_total"] if case else None


def ratios(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per combo "SIZEB/MODE": the ratios the issue asks for (None where a case is missing)."""
    look = Lookup(document)
    out: dict[str, dict[str, Any]] = {}
    for size, mode in _combos(document):
        proton = look.get("p2p", "proton", size, mode)
        proton_msg = look.get("p2p", "proton-msg", size, mode)
        engine = look.get("p2p", "engine", size, mode)
        by = look.best("p2p", "amqscale-bytes", size, mode)
        msg = look.best("p2p", "amqscale-messages", size, mode)
        by_batch = look.best("p2p", "amqscale-bytes-batch", size, mode)
        msg_batch = look.best("p2p", "amqscale-messages-batch", size, mode)
        msg_base = proton_msg or proton
        r: dict[str, Any] = {
            "proton_msg_per_s": _rate(proton),
            "engine_limit_msg_per_s": _rate(engine),
            "amqscale_bytes_msg_per_s": _rate(by),
            "amqscale_bytes_workers": by["workers"] if by else None,
            "amqscale_messages_msg_per_s": _rate(msg),
            "amqscale_messages_workers": msg["workers"] if msg else None,
            "bytes_vs_proton_rate": _ratio(_rate(by), _rate(proton)),
            "bytes_vs_proton_cpu_per_msg": _ratio(_cpu_total(by), _cpu_total(proton)),
            "bytes_pct_of_engine_limit": _pct(_rate(by), _rate(engine)),
            "worker_cpu_vs_proton_cpu": _worker_vs_proton(by, proton),
            "messages_vs_proton_rate": _ratio(_rate(msg), _rate(msg_base)),
            "messages_baseline": "proton-msg" if proton_msg else ("proton" if proton else None),
            "bytes_batch_vs_proton_rate": _ratio(_rate(by_batch), _rate(proton)),
            "messages_batch_vs_proton_rate": _ratio(_rate(msg_batch), _rate(msg_base)),
            "user_us_per_msg_bytes": by["user_us_per_msg"] if by else None,
            "user_us_per_msg_messages": msg["user_us_per_msg"] if msg else None,
            "library_us_per_msg_bytes": _library(by),
            "library_us_per_msg_messages": _library(msg),
            "library_us_per_msg_bytes_batch": _library(by_batch),
            "library_us_per_msg_messages_batch": _library(msg_batch),
            "latency_p99_us": _latencies(look, size, mode),
        }
        r.update(_tls_ratios(look, size, mode))
        r.update(_broker_ratios(look, size, mode))
        out[f"{size}B/{mode}"] = r
    return out


def _library(case: dict[str, Any] | None) -> dict[str, float] | None:
    return (case.get("library_us_per_msg") or None) if case else None


def _pct(a: float | None, b: float | None) -> float | None:
    value = _ratio(a, b)
    return None if value is None else 100 * value


def _worker_vs_proton(ours: dict[str, Any] | None,
                      proton: dict[str, Any] | None) -> dict[str, float | None] | None:
    """amqscale's workers' CPU per message over proton-python's process's, per side."""
    if not ours or not proton:
        return None
    return {side: _ratio(ours["workers_us_per_msg"][side], proton["user_us_per_msg"][side])
            for side in ("sender", "receiver")}


def _latencies(look: Lookup, size: int, mode: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in ("proton", "proton-msg", "engine", "proton-tls"):
        case = look.get("p2p", family, size, mode)
        if case and case.get("latency"):
            found[family] = case["latency"]["p99_us"]
    for family in ("amqscale-bytes", "amqscale-messages", "amqscale-bytes-tls"):
        for workers in look.workers:
            case = look.get("p2p", family, size, mode, workers)
            if case and case.get("latency"):
                found[f"{family}/w{workers}"] = case["latency"]["p99_us"]
    return found


def _side_cpu(case: dict[str, Any], side: str) -> float:
    """CPU per message of one side: its process and its workers."""
    return float(case["user_us_per_msg"][side] + case["workers_us_per_msg"].get(side, 0.0))


def _tls_extra(tls: dict[str, Any] | None,
               plain: dict[str, Any] | None) -> dict[str, float] | None:
    """What TLS adds to the CPU per message: per side (process + workers) and in all."""
    if not tls or not plain:
        return None
    extra = {side: _side_cpu(tls, side) - _side_cpu(plain, side)
             for side in ("sender", "receiver")}
    extra["total"] = tls["cpu_us_per_msg_total"] - plain["cpu_us_per_msg_total"]
    return extra


# TLS family -> (its plain twin, the key its ratios are named by)
TLS_PAIRS = {"proton-tls": ("proton", "proton"),
             "amqscale-bytes-tls": ("amqscale-bytes", "bytes"),
             "amqscale-bytes-batch-tls": ("amqscale-bytes-batch", "bytes_batch")}


def _tls_ratios(look: Lookup, size: int, mode: str) -> dict[str, Any]:
    """amqscale over TLS vs proton-python over TLS, and each TLS case vs its plain twin in
    the same run (amqscale: the faster TLS worker count, against the plain case with the
    same workers)."""
    out: dict[str, Any] = {}
    found: dict[str, dict[str, Any] | None] = {}
    for family, (plain_family, key) in TLS_PAIRS.items():
        if family.startswith("amqscale"):
            tls = look.best("p2p", family, size, mode)
            workers = tls["workers"] if tls else 0
            plain = look.get("p2p", plain_family, size, mode, workers) if tls else None
            out[f"tls_{key}_workers"] = workers or None
        else:
            tls = look.get("p2p", family, size, mode)
            plain = look.get("p2p", plain_family, size, mode)
        found[key] = tls
        out[f"tls_{key}_msg_per_s"] = _rate(tls)
        out[f"tls_vs_plain_{key}_rate"] = _ratio(_rate(tls), _rate(plain))
        out[f"tls_vs_plain_{key}_cpu_per_msg"] = _ratio(_cpu_total(tls), _cpu_total(plain))
        out[f"tls_extra_cpu_us_per_msg_{key}"] = _tls_extra(tls, plain)
    proton_tls = _rate(found["proton"])
    out["tls_bytes_vs_proton_tls_rate"] = _ratio(_rate(found["bytes"]), proton_tls)
    out["tls_bytes_batch_vs_proton_tls_rate"] = _ratio(_rate(found["bytes_batch"]), proton_tls)
    return out


def _broker_ratios(look: Lookup, size: int, mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in ("rabbitmq", "proton-c-broker"):
        proton = look.get(path, "proton", size, mode)
        ours = look.best(path, "amqscale-bytes", size, mode)
        key = path.replace("-", "_")
        out[f"{key}_proton_msg_per_s"] = _rate(proton)
        out[f"{key}_amqscale_msg_per_s"] = _rate(ours)
        out[f"{key}_amqscale_vs_proton_rate"] = _ratio(_rate(ours), _rate(proton))
        out[f"{key}_broker_cpu_us_per_msg"] = {
            name: case["cpu_us_per_msg"].get("broker")
            for name, case in (("proton", proton), ("amqscale", ours)) if case}
    c_examples = look.get("proton-c-broker", "c-examples", 0, "at-least-once")
    if c_examples and mode == "at-least-once":
        ours = look.best("proton-c-broker", "amqscale-bytes", size, mode)
        out["proton_c_broker_c_examples_msg_per_s"] = _rate(c_examples)
        out["proton_c_broker_amqscale_vs_c_examples_rate"] = _ratio(_rate(ours),
                                                                     _rate(c_examples))
    return out


# ---- targets --------------------------------------------------------------------------------


def _check(name: str, combo: str, value: float | None, target: float, op: str
           ) -> dict[str, Any] | None:
    if value is None:
        return None
    met = value <= target if op == "<=" else value >= target
    return {"name": name, "combo": combo, "value": value, "target": target, "op": op,
            "met": met}


def targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target the issue sets, checked for every combo that has the figures for it."""
    look = Lookup(document)
    checks: list[dict[str, Any] | None] = []
    for combo, r in document.get("ratios", {}).items():
        size, mode = int(combo.split("B/")[0]), combo.split("/")[1]
        wvp = r["worker_cpu_vs_proton_cpu"]
        worst = max(v for v in wvp.values() if v is not None) if wvp and any(
            v is not None for v in wvp.values()) else None
        checks += [
            _check("worker CPU/msg <= 1/15 of proton-python's (worse side)", combo, worst,
                   TARGETS["worker_cpu"], "<="),
            _check("Message objects >= 8x proton-python (rate)", combo,
                   r["messages_vs_proton_rate"], TARGETS["messages_rate"], ">="),
            _check("bytes >= 12x proton-python (rate)", combo, r["bytes_vs_proton_rate"],
                   TARGETS["bytes_rate"], ">="),
            _check("bytes >= 40% of the engine limit (b)", combo,
                   r["bytes_pct_of_engine_limit"], TARGETS["bytes_pct_of_limit"], ">="),
            _check("bytes, send_many/receive_many: library's user-process CPU <= 1 us/msg "
                   "(worse side)", combo, _worse(r.get("library_us_per_msg_bytes_batch")),
                   TARGETS["handover_bytes_us"], "<="),
            _check("Message id+3 props, batch API: library's user-process CPU <= 3 us/msg "
                   "(worse side)", combo, _worse(r.get("library_us_per_msg_messages_batch")),
                   TARGETS["handover_messages_us"], "<="),
            _check("RabbitMQ: amqscale >= 2x proton-python (rate)", combo,
                   r.get("rabbitmq_amqscale_vs_proton_rate"), TARGETS["rabbitmq_rate"], ">="),
            _check("TLS: amqscale bytes >= 8x proton-python, both TLS (rate)", combo,
                   r.get("tls_bytes_vs_proton_tls_rate"), TARGETS["tls_rate"], ">="),
        ]
        for family in ("amqscale-bytes", "amqscale-messages"):
            best = look.best("p2p", family, size, mode)
            if best and best.get("latency"):
                checks.append(_check(
                    f"latency p99 <= 1 ms at half peak ({family}/w{best['workers']})", combo,
                    best["latency"]["p99_us"], TARGETS["latency_p99_us"], "<="))
    checks += _ring_targets(document.get("micro", {}).get("ring", {}))
    return [c for c in checks if c is not None]


def _worse(sides: dict[str, float] | None) -> float | None:
    return max(sides.values()) if sides else None


def _ring_targets(ring: dict[str, Any]) -> list[dict[str, Any] | None]:
    """ring_bench.py computes its own (ring >= 10 M/s batched, >= 2 M/s, >= 20x Queue)."""
    return [{"name": name, "combo": "ring", "value": t["value"], "target": t["target"],
             "op": ">=", "met": bool(t["met"])} for name, t in ring.get("targets", {}).items()]


# ---- printing -------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ",.1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k[:1]}:{_fmt(v, spec)}" for k, v in value.items()) or "-"
    return format(value, spec)


def case_table(document: dict[str, Any]) -> str:
    w = max([46, *(len(name) for name in document["cases"])])
    head = (f"{'case':<{w}} {'msg/s':>10} {'CPU us/msg':>10} {'sender':>7} {'s.wrk':>6} "
            f"{'recv':>7} {'r.wrk':>6} {'broker':>7} {'lost':>5} {'dup':>4} "
            f"{'p50 us':>8} {'p99 us':>8} {'p99.9':>8}")
    lines = [head, "-" * len(head)]
    for name, case in document["cases"].items():
        if not case.get("msg_per_s"):
            lines.append(f"{name:<{w}} ERROR {'; '.join(case.get('errors', []))[:120]}")
            continue
        cpu = case["cpu_us_per_msg"]
        workers = case["workers_us_per_msg"]
        lat = case.get("latency") or {}
        lines.append(
            f"{name:<{w}} {case['msg_per_s']:>10,.0f} {case['cpu_us_per_msg_total']:>10.2f} "
            f"{cpu['sender']:>7.2f} {_fmt(workers['sender'] or None, '.2f'):>6} "
            f"{cpu['receiver']:>7.2f} {_fmt(workers['receiver'] or None, '.2f'):>6} "
            f"{_fmt(cpu.get('broker'), '.2f'):>7} {case['lost']:>5} {case['duplicates']:>4} "
            f"{_fmt(lat.get('p50_us'), ',.0f'):>8} {_fmt(lat.get('p99_us'), ',.0f'):>8} "
            f"{_fmt(lat.get('p99_9_us'), ',.0f'):>8}")
    return "\n".join(lines)


RATIO_ROWS = [
    ("amqscale bytes vs proton-python, rate (x)", "bytes_vs_proton_rate", ".2f"),
    ("amqscale bytes vs proton-python, CPU/msg (x)", "bytes_vs_proton_cpu_per_msg", ".3f"),
    ("bytes, % of engine limit (b)", "bytes_pct_of_engine_limit", ".1f"),
    ("engine limit (b), msg/s", "engine_limit_msg_per_s", ",.0f"),
    ("worker CPU/msg / proton-python CPU/msg", "worker_cpu_vs_proton_cpu", ".3f"),
    ("Message objects vs proton-python, rate (x)", "messages_vs_proton_rate", ".2f"),
    ("bytes, batch API vs proton-python, rate (x)", "bytes_batch_vs_proton_rate", ".2f"),
    ("Message, batch API vs proton-python, rate (x)", "messages_batch_vs_proton_rate", ".2f"),
    ("bytes: user process us/msg", "user_us_per_msg_bytes", ".2f"),
    ("Message: user process us/msg", "user_us_per_msg_messages", ".2f"),
    ("bytes: library's share us/msg", "library_us_per_msg_bytes", ".2f"),
    ("Message: library's share us/msg", "library_us_per_msg_messages", ".2f"),
    ("bytes, batch API: library's share us/msg", "library_us_per_msg_bytes_batch", ".2f"),
    ("Message, batch API: library's share us/msg", "library_us_per_msg_messages_batch",
     ".2f"),
    ("TLS: amqscale bytes vs proton-python (x)", "tls_bytes_vs_proton_tls_rate", ".2f"),
    ("TLS: bytes, batch API vs proton-python (x)", "tls_bytes_batch_vs_proton_tls_rate",
     ".2f"),
    ("TLS: amqscale bytes msg/s", "tls_bytes_msg_per_s", ",.0f"),
    ("TLS: proton-python msg/s", "tls_proton_msg_per_s", ",.0f"),
    ("TLS/plain rate: amqscale bytes (x)", "tls_vs_plain_bytes_rate", ".3f"),
    ("TLS/plain rate: bytes, batch API (x)", "tls_vs_plain_bytes_batch_rate", ".3f"),
    ("TLS/plain rate: proton-python (x)", "tls_vs_plain_proton_rate", ".3f"),
    ("TLS/plain CPU/msg: amqscale bytes (x)", "tls_vs_plain_bytes_cpu_per_msg", ".3f"),
    ("TLS/plain CPU/msg: bytes, batch API (x)", "tls_vs_plain_bytes_batch_cpu_per_msg",
     ".3f"),
    ("TLS/plain CPU/msg: proton-python (x)", "tls_vs_plain_proton_cpu_per_msg", ".3f"),
    ("TLS extra CPU us/msg: amqscale bytes", "tls_extra_cpu_us_per_msg_bytes", ".2f"),
    ("TLS extra CPU us/msg: bytes, batch API", "tls_extra_cpu_us_per_msg_bytes_batch",
     ".2f"),
    ("TLS extra CPU us/msg: proton-python", "tls_extra_cpu_us_per_msg_proton", ".1f"),
    ("TLS: amqscale workers compared", "tls_bytes_workers", "d"),
    ("TLS: batch API workers compared", "tls_bytes_batch_workers", "d"),
    ("RabbitMQ: amqscale vs proton-python (x)", "rabbitmq_amqscale_vs_proton_rate", ".2f"),
    ("RabbitMQ: broker CPU us/msg", "rabbitmq_broker_cpu_us_per_msg", ".1f"),
    ("C broker: amqscale vs proton-python (x)", "proton_c_broker_amqscale_vs_proton_rate",
     ".2f"),
    ("C broker: amqscale vs C send/receive (x)",
     "proton_c_broker_amqscale_vs_c_examples_rate", ".2f"),
    ("C broker: broker CPU us/msg", "proton_c_broker_broker_cpu_us_per_msg", ".1f"),
]


def ratio_table(document: dict[str, Any]) -> str:
    combos = list(document.get("ratios", {}))
    if not combos:
        return ""
    width = max(22, *(len(c) + 2 for c in combos))
    lines = [f"{'ratio':<46}" + "".join(f"{c:>{width}}" for c in combos)]
    for label, key, spec in RATIO_ROWS:
        cells = [_fmt(document["ratios"][c].get(key), spec) for c in combos]
        if any(cell != "-" for cell in cells):
            lines.append(f"{label:<46}" + "".join(f"{cell:>{width}}" for cell in cells))
    families = sorted({f for c in combos for f in document["ratios"][c]["latency_p99_us"]})
    for family in families:
        cells = [_fmt(document["ratios"][c]["latency_p99_us"].get(family), ",.0f")
                 for c in combos]
        lines.append(f"{'latency p99 us, ' + family:<46}"
                     + "".join(f"{cell:>{width}}" for cell in cells))
    return "\n".join(lines)


def target_table(document: dict[str, Any]) -> str:
    lines = [f"{'target':<62} {'combo':<20} {'value':>12} {'target':>10}  verdict"]
    for t in document.get("targets", []):
        verdict = "pass" if t["met"] else "MISS"
        lines.append(f"{t['name']:<62} {t['combo']:<20} {t['value']:>12,.3f} "
                     f"{t['op']} {t['target']:>7,.3f}  {verdict}")
    return "\n".join(lines)


def micro_table(document: dict[str, Any]) -> str:
    lines = []
    codec = document.get("micro", {}).get("codec")
    if codec:
        if "error" in codec:
            lines.append(f"codec_bench: ERROR {codec['error']}")
        else:
            us = codec["us_per_message"]
            lines.append(
                f"codec (us/msg, id + 3 props + 100 B): encode amqscale "
                f"{us['amqscale_encode']:.2f} vs proton {us['proton_encode']:.2f} "
                f"(x{codec['ratio_encode']:.2f}); decode amqscale {us['amqscale_decode']:.2f}"
                f" vs proton {us['proton_decode']:.2f} (x{codec['ratio_decode']:.2f})")
    ring = document.get("micro", {}).get("ring")
    if ring:
        if "error" in ring:
            lines.append(f"ring_bench: ERROR {ring['error']}")
        else:
            for r in ring["results"]:
                lines.append(f"ring_bench {r['mechanism']:<24} {r['mode']:<6} "
                             f"{r['rate'] / 1e6:8.2f} M records/s")
    return "\n".join(lines)


def tables(document: dict[str, Any]) -> str:
    parts = ["", case_table(document), "", ratio_table(document), "", target_table(document),
             "", micro_table(document)]
    return "\n".join(parts)


# ---- the chart ------------------------------------------------------------------------------


def chart(document: dict[str, Any], path: Path) -> bool:
    """Rate, CPU per message by process and latency, per case, as one PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = {k: c for k, c in document["cases"].items() if c.get("msg_per_s")}
    if not cases:
        return False
    names = list(cases)
    with_latency = [k for k in names if cases[k].get("latency")]
    rows = [len(names), len(names)] + ([len(with_latency)] if with_latency else [])
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.5 * len(rows) + 0.22 * sum(rows)),
                             gridspec_kw={"height_ratios": [r + 2 for r in rows]})
    y = list(range(len(names)))
    ax_rate = axes[0]
    ax_rate.barh(y, [cases[k]["msg_per_s"] for k in names], color="tab:blue")
    ax_rate.set_xscale("log")
    ax_rate.set_xlabel("messages / s (log), median of the runs")
    _cpu_bars(axes[1], cases, names, y)
    if with_latency:
        _latency_bars(axes[2], cases, with_latency)
    for ax, labels in zip(axes, [names, names, with_latency], strict=False):
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    kind = "quick smoke run" if document["settings"]["quick"] else "full run"
    fig.suptitle(f"amqscale perf/compare.py, {document['started']} ({kind})")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _cpu_bars(ax: Any, cases: dict[str, Any], names: list[str], y: list[int]) -> None:
    roles = {"sender": "tab:orange", "sender workers": "tab:red",
             "receiver": "tab:green", "receiver workers": "tab:olive", "broker": "tab:gray"}
    left = [0.0] * len(names)
    for role, color in roles.items():
        values = [_role_cpu(cases[k], role) for k in names]
        ax.barh(y, values, left=left, color=color, label=role)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("CPU microseconds / message, by process")
    ax.legend(fontsize=7, loc="lower right")


def _role_cpu(case: dict[str, Any], role: str) -> float:
    if role.endswith("workers"):
        return float(case["workers_us_per_msg"][role.split()[0]])
    return float(case["cpu_us_per_msg"].get(role, 0.0))


def _latency_bars(ax: Any, cases: dict[str, Any], names: list[str]) -> None:
    y = list(range(len(names)))
    for offset, (label, key) in enumerate(
            (("p50", "p50_us"), ("p99", "p99_us"), ("p99.9", "p99_9_us"))):
        ax.barh([v + (offset - 1) * 0.27 for v in y], [cases[k]["latency"][key] for k in names],
                height=0.27, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency at half peak, microseconds (log)")
    ax.axvline(1000, color="black", linewidth=0.8, linestyle="--")
    ax.legend(fontsize=7)
