"""The figures of perf/compare.py: per run, per case (medians), ratios, targets, tables, chart,
and the small summary of a run.

Nothing here runs a benchmark. A run's figures come from the two JSON reports of its peers
(perf/peers.py): rate = messages received / (end - sender start); MB/s = rate x body bytes;
CPU us/msg per process = CPU seconds / messages sent; a case keeps the median of its runs'
figures. Ratios compare cases of the same body size and settle mode ("combo"). The anchor
"(b)" of the peer-to-peer ratios is the bare engine pair (family ``bare``). Where amqscale ran
with several worker counts, the faster one is the one compared (its worker count is recorded
with the ratios), and the same ratio with 1 worker a side is beside it (``..._w1``: one
connection and the same credit as the bare pair and proton-python). Targets are computed
from those ratios, never written in, for the small-body combos (at most LARGE_BODY bytes);
the large bodies' figures are reported.
"""

from __future__ import annotations

import base64
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SCHEMA = "amqscale-perf-compare/2"
SUMMARY_SCHEMA = "amqscale-perf-compare-summary/1"
PERCENTILES = {"p50_us": 50.0, "p99_us": 99.0, "p99_9_us": 99.9, "max_us": 100.0}
LARGE_BODY = 1024  # targets apply to bodies of at most this many bytes (compare.py's too)
FIXED_RATES = {1_000: "1k", 10_000: "10k"}  # the fixed-rate latency passes, and their keys
HALF_PEAK_LABEL = "half peak: needs more cores than 2 to be within target"
OLD_NAMES = {"engine-loop": "engine"}  # families as earlier documents name them

TARGETS = {
    "worker_cpu": 1 / 15,  # amqscale worker CPU/msg vs proton-python process CPU/msg
    "worker_cpu_vs_bare": 1.3,  # amqscale worker CPU/msg vs the bare pair's process, per side
    "messages_rate": 20.0,  # Message objects vs proton-python, rate
    "bytes_rate": 12.0,  # bytes vs proton-python, rate
    "bytes_pct_of_bare": 60.0,  # bytes one per call vs the bare pair (b), %
    "bytes_batch_pct_of_bare": 85.0,  # bytes, batch API vs the bare pair (b), %
    "handover_bytes_us": 1.0,  # user process CPU per message, bytes
    "handover_messages_us": 3.0,  # user process CPU per message, Message id + 3 properties
    "rabbitmq_rate": 2.0,  # amqscale vs proton-python through RabbitMQ
    "c_examples_rate": 1.0,  # amqscale vs the Proton C send/receive examples, C broker
    "latency_p99_us": 1000.0,  # at half the measured peak (needs more than 2 cores)
    "latency_vs_floor": 1.5,  # p99 at 1k and 10k msg/s vs perf/pipe_chain.py's floor
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
        "workers": settings.workers, "fixed_rates": list(FIXED_RATES),
    }


def floor_key(hops: int, rate: float) -> str:
    """The key of perf/pipe_chain.py's floor for `hops` pipes at `rate` in the document."""
    return f"hops{hops}/{rate:.0f}"


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
    if figures.get("error") or not figures.get("latency"):
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
    entry["mb_per_s"] = mb_per_s(entry["msg_per_s"], entry.get("body_bytes"))


def mb_per_s(rate: float | None, body_bytes: int | None) -> float | None:
    """Body bytes per second, in 10^6 bytes (None for the C examples' own body)."""
    return rate * body_bytes / 1e6 if rate is not None and body_bytes else None


def merge_latency(runs: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    """One latency figure of several runs at `rate`: their histograms merged (p50, p99,
    p99.9, max over every message), or, for runs without one, the medians of theirs."""
    good = [r for r in runs if not r.get("error") and r.get("latency")]
    if not good:
        errors = [r["error"] for r in runs if r.get("error")]
        return {"target_rate": rate, "error": "; ".join(errors) or "no latency recorded"}
    merged: dict[str, Any] = {
        "target_rate": rate,
        "achieved_msg_per_s": statistics.median(r.get("msg_per_s", 0.0) for r in good),
        "runs": len(good),
        "lost": sum(r.get("lost", 0) for r in good),
    }
    if all(r.get("histogram") for r in good):
        histogram = decode_histograms(r["histogram"] for r in good)
        merged.update(percentiles(histogram))
        merged["histogram"] = base64.b64encode(histogram.encode()).decode()
    else:
        merged.update({name: statistics.median(r["latency"][name] for r in good)
                       for name in PERCENTILES})
        merged["count"] = sum(r["latency"]["count"] for r in good)
    return merged


def summarize_latency(entry: dict[str, Any]) -> None:
    """Merge the half-peak latency runs' histograms: p50/p99/p99.9/max over every message."""
    runs = [r for r in entry.get("latency_runs", []) if r.get("histogram")]
    if not runs:
        entry["latency"] = None
        return
    merged = merge_latency(runs, runs[0]["target_rate"])
    entry["latency"] = merged if merged and merged.get("p99_us") is not None else None
    if entry["latency"] is not None:
        entry["latency"]["label"] = HALF_PEAK_LABEL


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
        if case is None and family in OLD_NAMES:
            case = self.cases.get(case_id(path, OLD_NAMES[family], size, mode, workers))
        return case if case and case.get("msg_per_s") else None

    def best(self, path: str, family: str, size: int, mode: str) -> dict[str, Any] | None:
        """The faster of amqscale's worker counts."""
        found = [c for w in self.workers if (c := self.get(path, family, size, mode, w))]
        return max(found, key=lambda c: c["msg_per_s"]) if found else None

    def w1(self, path: str, family: str, size: int, mode: str) -> dict[str, Any] | None:
        """amqscale with 1 worker a side: one connection, as the bare pair and proton."""
        return self.get(path, family, size, mode, 1)


def _rate(case: dict[str, Any] | None) -> float | None:
    return case["msg_per_s"] if case else None


def _mb(case: dict[str, Any] | None) -> float | None:
    if not case:
        return None
    if case.get("mb_per_s") is not None:
        return float(case["mb_per_s"])
    return mb_per_s(case["msg_per_s"], case.get("body_bytes"))


def _cpu_total(case: dict[str, Any] | None) -> float | None:
    return case["cpu_us_per_msg_total"] if case else None


def ratios(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per combo "SIZEB/MODE": the ratios the issue asks for (None where a case is missing).
    Fields without a suffix compare amqscale's faster worker count; ``_w1``: 1 worker."""
    look = Lookup(document)
    out: dict[str, dict[str, Any]] = {}
    for size, mode in _combos(document):
        proton = look.get("p2p", "proton", size, mode)
        proton_msg = look.get("p2p", "proton-msg", size, mode)
        bare = look.get("p2p", "bare", size, mode)
        loop = look.get("p2p", "engine-loop", size, mode)
        rhea = look.get("p2p", "rhea", size, mode)
        msg_base = proton_msg or proton
        r: dict[str, Any] = {
            "proton_msg_per_s": _rate(proton),
            "proton_msg_msg_per_s": _rate(proton_msg),
            "bare_msg_per_s": _rate(bare),
            "engine_loop_msg_per_s": _rate(loop),
            "rhea_msg_per_s": _rate(rhea),
            "proton_mb_per_s": _mb(proton),
            "bare_mb_per_s": _mb(bare),
            "rhea_mb_per_s": _mb(rhea),
            "engine_loop_pct_of_bare_pair": _pct(_rate(loop), _rate(bare)),
            "proton_pct_of_bare_pair": _pct(_rate(proton), _rate(bare)),
            "rhea_pct_of_bare_pair": _pct(_rate(rhea), _rate(bare)),
            "messages_baseline": "proton-msg" if proton_msg else ("proton" if proton else None),
        }
        for suffix, pick in (("", look.best), ("_w1", look.w1)):
            by = pick("p2p", "amqscale-bytes", size, mode)
            msg = pick("p2p", "amqscale-messages", size, mode)
            by_batch = pick("p2p", "amqscale-bytes-batch", size, mode)
            msg_batch = pick("p2p", "amqscale-messages-batch", size, mode)
            if not suffix:
                r["amqscale_bytes_workers"] = by["workers"] if by else None
                r["amqscale_messages_workers"] = msg["workers"] if msg else None
                r["amqscale_bytes_batch_workers"] = by_batch["workers"] if by_batch else None
            r.update({
                f"amqscale_bytes_msg_per_s{suffix}": _rate(by),
                f"amqscale_bytes_mb_per_s{suffix}": _mb(by),
                f"amqscale_messages_msg_per_s{suffix}": _rate(msg),
                f"amqscale_bytes_batch_msg_per_s{suffix}": _rate(by_batch),
                f"bytes_vs_proton_rate{suffix}": _ratio(_rate(by), _rate(proton)),
                f"bytes_vs_proton_mb_per_s{suffix}": _ratio(_mb(by), _mb(proton)),
                f"bytes_vs_proton_cpu_per_msg{suffix}": _ratio(_cpu_total(by),
                                                               _cpu_total(proton)),
                f"bytes_pct_of_bare_pair{suffix}": _pct(_rate(by), _rate(bare)),
                f"bytes_vs_bare_mb_per_s{suffix}": _ratio(_mb(by), _mb(bare)),
                f"bytes_vs_bare_cpu_per_msg{suffix}": _ratio(_cpu_total(by), _cpu_total(bare)),
                f"bytes_batch_pct_of_bare_pair{suffix}": _pct(_rate(by_batch), _rate(bare)),
                f"bytes_pct_of_engine_loop{suffix}": _pct(_rate(by), _rate(loop)),
                f"bytes_vs_rhea_rate{suffix}": _ratio(_rate(by), _rate(rhea)),
                f"worker_cpu_vs_proton_cpu{suffix}": _worker_vs(by, proton),
                f"messages_vs_proton_rate{suffix}": _ratio(_rate(msg), _rate(msg_base)),
                f"bytes_batch_vs_proton_rate{suffix}": _ratio(_rate(by_batch), _rate(proton)),
                f"messages_batch_vs_proton_rate{suffix}": _ratio(_rate(msg_batch),
                                                                 _rate(msg_base)),
                f"user_us_per_msg_bytes{suffix}": by["user_us_per_msg"] if by else None,
                f"user_us_per_msg_messages{suffix}": msg["user_us_per_msg"] if msg else None,
                f"library_us_per_msg_bytes{suffix}": _library(by),
                f"library_us_per_msg_messages{suffix}": _library(msg),
                f"library_us_per_msg_bytes_batch{suffix}": _library(by_batch),
                f"library_us_per_msg_messages_batch{suffix}": _library(msg_batch),
            })
        # The workers against the bare pair's processes: like for like with 1 worker a
        # side (one connection, one link, credit 1000); the faster worker count beside it.
        r["worker_cpu_vs_bare_cpu"] = _worker_vs(look.w1("p2p", "amqscale-bytes", size, mode),
                                                 bare)
        r["worker_cpu_vs_bare_cpu_best"] = _worker_vs(
            look.best("p2p", "amqscale-bytes", size, mode), bare)
        r["bare_cpu_us_per_msg"] = bare["user_us_per_msg"] if bare else None
        r["latency_p99_us"] = _latencies(look, size, mode)
        r["latency_half_peak_label"] = HALF_PEAK_LABEL
        r.update(_fixed_rate_latency(document, look, size, mode))
        r.update(_tls_ratios(look, size, mode))
        r.update(_feature_ratios(look, size, mode))
        r.update(_broker_ratios(look, size, mode))
        out[f"{size}B/{mode}"] = r
    return out


def _library(case: dict[str, Any] | None) -> dict[str, float] | None:
    return (case.get("library_us_per_msg") or None) if case else None


def _pct(a: float | None, b: float | None) -> float | None:
    value = _ratio(a, b)
    return None if value is None else 100 * value


def _worker_vs(ours: dict[str, Any] | None,
               base: dict[str, Any] | None) -> dict[str, float | None] | None:
    """amqscale's workers' CPU per message (all of that side's workers) over the baseline's
    process's (proton-python's or the bare pair's), per side."""
    if not ours or not base:
        return None
    return {side: _ratio(ours["workers_us_per_msg"][side], base["user_us_per_msg"][side])
            for side in ("sender", "receiver")}


_worker_vs_proton = _worker_vs  # the name it had


LATENCY_FAMILIES = ("proton", "proton-msg", "bare", "engine-loop", "rhea", "proton-tls",
                    "amqscale-reactor")
LATENCY_AMQSCALE = ("amqscale-bytes", "amqscale-messages", "amqscale-bytes-tls",
                    "amqscale-aio-bytes", "amqscale-bytes-noreconnect")


def _latency_cases(look: Lookup, size: int, mode: str) -> dict[str, dict[str, Any]]:
    """The peer-to-peer cases of a combo that can have latency, by family[/wN]."""
    found: dict[str, dict[str, Any]] = {}
    for family in LATENCY_FAMILIES:
        case = look.get("p2p", family, size, mode)
        if case:
            found[family] = case
    for family in LATENCY_AMQSCALE:
        for workers in look.workers:
            case = look.get("p2p", family, size, mode, workers)
            if case:
                found[f"{family}/w{workers}"] = case
    return found


def _latencies(look: Lookup, size: int, mode: str) -> dict[str, float]:
    """p99 at half peak, by family[/wN]."""
    return {name: case["latency"]["p99_us"]
            for name, case in _latency_cases(look, size, mode).items()
            if case.get("latency") and case["latency"].get("p99_us") is not None}


def _floor_hops(name: str) -> int:
    """perf/pipe_chain.py's pipes for a family's processes: 3 for an amqscale pair (4
    processes, whatever its workers), 1 for a pair of two processes."""
    return 3 if name.startswith("amqscale") else 1


def _fixed_rate_latency(document: dict[str, Any], look: Lookup, size: int,
                        mode: str) -> dict[str, Any]:
    """At each fixed rate: p99 per family, the floor's p99 for as many processes, their
    ratio, and the families skipped (why)."""
    floors = document.get("latency_floor") or {}
    out: dict[str, Any] = {}
    cases = _latency_cases(look, size, mode)
    for rate, key in FIXED_RATES.items():
        p99: dict[str, float] = {}
        vs_floor: dict[str, float | None] = {}
        skipped: dict[str, str] = {}
        floor_p99: dict[str, float] = {}
        for name, case in cases.items():
            fixed = (case.get("latency_fixed") or {}).get(str(rate))
            if not fixed:
                continue
            if fixed.get("skipped"):
                skipped[name] = fixed["skipped"]
                continue
            if fixed.get("p99_us") is None:
                skipped[name] = fixed.get("error") or "no latency recorded"
                continue
            hops = _floor_hops(name)
            floor = floors.get(floor_key(hops, rate)) or {}
            if floor.get("p99_us") is not None:
                floor_p99[f"hops{hops}"] = floor["p99_us"]
            p99[name] = fixed["p99_us"]
            vs_floor[name] = _ratio(fixed["p99_us"], floor.get("p99_us"))
        out[f"latency_p99_us_{key}"] = p99 or None
        out[f"latency_floor_p99_us_{key}"] = floor_p99 or None
        out[f"latency_p99_vs_floor_{key}"] = vs_floor or None
        out[f"latency_skipped_{key}"] = skipped or None
    return out


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
    w1 = look.w1("p2p", "amqscale-bytes-tls", size, mode)
    out["tls_bytes_vs_proton_tls_rate_w1"] = _ratio(_rate(w1), proton_tls)
    return out


# What each feature row costs: (key, its family, the family it is compared with, path).
# Each is compared with the same worker count (the feature row's), in the same run.
FEATURES = [
    ("aio_vs_blocking_bytes", "amqscale-aio-bytes", "amqscale-bytes", "p2p"),
    ("aio_vs_blocking_bytes_batch", "amqscale-aio-bytes-batch", "amqscale-bytes-batch", "p2p"),
    ("reactor_vs_proton", "amqscale-reactor", "proton", "p2p"),
    ("reactor_vs_blocking_bytes", "amqscale-reactor", "amqscale-bytes", "p2p"),
    ("reconnect_on_vs_off", "amqscale-bytes", "amqscale-bytes-noreconnect", "p2p"),
    ("proton_c_broker_inworker_vs_bytes", "amqscale-inworker", "amqscale-bytes",
     "proton-c-broker"),
]


def _feature_ratios(look: Lookup, size: int, mode: str) -> dict[str, Any]:
    """Per feature: its rate and total CPU per message over its baseline's, and the CPU per
    message it adds (total, and on the receiving side: its process and its workers)."""
    out: dict[str, Any] = {}
    for key, family, base_family, path in FEATURES:
        pair = _feature_pair(look, family, base_family, path, size, mode)
        case, base = pair if pair else (None, None)
        out[f"{key}_rate"] = _ratio(_rate(case), _rate(base))
        out[f"{key}_cpu_per_msg"] = _ratio(_cpu_total(case), _cpu_total(base))
        out[f"{key}_extra_cpu_us_per_msg"] = (
            case["cpu_us_per_msg_total"] - base["cpu_us_per_msg_total"]
            if case and base else None)
        out[f"{key}_workers"] = (case.get("workers") or base.get("workers")
                                 ) if case and base else None
    inworker = look.w1("proton-c-broker", "amqscale-inworker", size, mode) or look.best(
        "proton-c-broker", "amqscale-inworker", size, mode)
    out["proton_c_broker_inworker_msg_per_s"] = _rate(inworker)
    out["proton_c_broker_inworker_receiver_cpu_us_per_msg"] = (
        _side_cpu(inworker, "receiver") if inworker else None)
    return out


def _feature_pair(look: Lookup, family: str, base_family: str, path: str, size: int,
                  mode: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The feature's case and its baseline's with the same workers (the fewest both ran)."""
    counts = look.workers if family.startswith("amqscale") else [0]
    for workers in counts:
        case = look.get(path, family, size, mode, workers)
        base_workers = workers if base_family.startswith("amqscale") else 0
        base = look.get(path, base_family, size, mode, base_workers)
        if case and base:
            return case, base
    return None


def _broker_ratios(look: Lookup, size: int, mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in ("rabbitmq", "proton-c-broker"):
        proton = look.get(path, "proton", size, mode)
        ours = look.best(path, "amqscale-bytes", size, mode)
        ours_w1 = look.w1(path, "amqscale-bytes", size, mode)
        key = path.replace("-", "_")
        out[f"{key}_proton_msg_per_s"] = _rate(proton)
        out[f"{key}_amqscale_msg_per_s"] = _rate(ours)
        out[f"{key}_amqscale_workers"] = ours["workers"] if ours else None
        out[f"{key}_amqscale_vs_proton_rate"] = _ratio(_rate(ours), _rate(proton))
        out[f"{key}_amqscale_vs_proton_rate_w1"] = _ratio(_rate(ours_w1), _rate(proton))
        out[f"{key}_broker_cpu_us_per_msg"] = {
            name: case["cpu_us_per_msg"].get("broker")
            for name, case in (("proton", proton), ("amqscale", ours)) if case}
    c_examples = look.get("proton-c-broker", "c-examples", 0, "at-least-once")
    # The C examples send their own small body, at-least-once: compared with small bodies.
    if c_examples and mode == "at-least-once" and size <= LARGE_BODY:
        ours = look.best("proton-c-broker", "amqscale-bytes", size, mode)
        ours_w1 = look.w1("proton-c-broker", "amqscale-bytes", size, mode)
        out["proton_c_broker_c_examples_msg_per_s"] = _rate(c_examples)
        out["proton_c_broker_amqscale_vs_c_examples_rate"] = _ratio(_rate(ours),
                                                                     _rate(c_examples))
        out["proton_c_broker_amqscale_vs_c_examples_rate_w1"] = _ratio(_rate(ours_w1),
                                                                        _rate(c_examples))
    return out


# ---- targets --------------------------------------------------------------------------------


def _check(name: str, combo: str, value: float | None, target: float, op: str,
           **extra: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    met = value <= target if op == "<=" else value >= target
    check = {"name": name, "combo": combo, "value": value, "target": target, "op": op,
             "met": met}
    check.update({k: v for k, v in extra.items() if v is not None})
    return check


def targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target the issue sets, checked for every small-body combo that has the figures
    for it (`value`: the faster worker count unless the name says otherwise; `value_w1`:
    the same with 1 worker a side, for like-for-like reading)."""
    look = Lookup(document)
    checks: list[dict[str, Any] | None] = []
    for combo, r in document.get("ratios", {}).items():
        size, mode = int(combo.split("B/")[0]), combo.split("/")[1]
        if size > LARGE_BODY:
            continue  # large bodies: reported, no target
        checks += [
            _check("bytes one per call >= 60% of the bare pair (b) (rate)", combo,
                   r.get("bytes_pct_of_bare_pair"), TARGETS["bytes_pct_of_bare"], ">=",
                   value_w1=r.get("bytes_pct_of_bare_pair_w1"),
                   workers=r.get("amqscale_bytes_workers")),
            _check("bytes, batch API >= 85% of the bare pair (b) (rate)", combo,
                   r.get("bytes_batch_pct_of_bare_pair"), TARGETS["bytes_batch_pct_of_bare"],
                   ">=", value_w1=r.get("bytes_batch_pct_of_bare_pair_w1"),
                   workers=r.get("amqscale_bytes_batch_workers")),
            _check("worker CPU/msg <= 1.3x the bare pair's process (worse side, 1 worker)",
                   combo, _worse(r.get("worker_cpu_vs_bare_cpu")),
                   TARGETS["worker_cpu_vs_bare"], "<=",
                   value_best=_worse(r.get("worker_cpu_vs_bare_cpu_best"))),
            _check("worker CPU/msg <= 1/15 of proton-python's (worse side)", combo,
                   _worse(r.get("worker_cpu_vs_proton_cpu")), TARGETS["worker_cpu"], "<=",
                   value_w1=_worse(r.get("worker_cpu_vs_proton_cpu_w1"))),
            _check("Message objects >= 20x proton-python (rate)", combo,
                   r.get("messages_vs_proton_rate"), TARGETS["messages_rate"], ">=",
                   value_w1=r.get("messages_vs_proton_rate_w1")),
            _check("bytes >= 12x proton-python (rate)", combo, r.get("bytes_vs_proton_rate"),
                   TARGETS["bytes_rate"], ">=", value_w1=r.get("bytes_vs_proton_rate_w1")),
            _check("bytes, send_many/receive_many: library's user-process CPU <= 1 us/msg "
                   "(worse side)", combo, _worse(r.get("library_us_per_msg_bytes_batch")),
                   TARGETS["handover_bytes_us"], "<=",
                   value_w1=_worse(r.get("library_us_per_msg_bytes_batch_w1"))),
            _check("Message id+3 props, batch API: library's user-process CPU <= 3 us/msg "
                   "(worse side)", combo, _worse(r.get("library_us_per_msg_messages_batch")),
                   TARGETS["handover_messages_us"], "<=",
                   value_w1=_worse(r.get("library_us_per_msg_messages_batch_w1"))),
            _check("RabbitMQ: amqscale >= 2x proton-python (rate)", combo,
                   r.get("rabbitmq_amqscale_vs_proton_rate"), TARGETS["rabbitmq_rate"], ">=",
                   value_w1=r.get("rabbitmq_amqscale_vs_proton_rate_w1")),
            _check("C broker: amqscale >= 1x the C send/receive examples (rate)", combo,
                   r.get("proton_c_broker_amqscale_vs_c_examples_rate"),
                   TARGETS["c_examples_rate"], ">=",
                   value_w1=r.get("proton_c_broker_amqscale_vs_c_examples_rate_w1")),
            _check("TLS: amqscale bytes >= 8x proton-python, both TLS (rate)", combo,
                   r.get("tls_bytes_vs_proton_tls_rate"), TARGETS["tls_rate"], ">=",
                   value_w1=r.get("tls_bytes_vs_proton_tls_rate_w1")),
        ]
        for family in ("amqscale-bytes", "amqscale-messages"):
            best = look.best("p2p", family, size, mode)
            if best and best.get("latency") and best["latency"].get("p99_us") is not None:
                w1 = look.w1("p2p", family, size, mode)
                w1_lat = (w1 or {}).get("latency") or {}
                checks.append(_check(
                    f"latency p99 <= 1 ms at half peak ({family}/w{best['workers']}; "
                    f"{HALF_PEAK_LABEL})", combo, best["latency"]["p99_us"],
                    TARGETS["latency_p99_us"], "<=", value_w1=w1_lat.get("p99_us"),
                    note=HALF_PEAK_LABEL))
        best = look.best("p2p", "amqscale-bytes", size, mode)
        for rate, key in FIXED_RATES.items():
            vs_floor = r.get(f"latency_p99_vs_floor_{key}") or {}
            if best:
                name = f"amqscale-bytes/w{best['workers']}"
                checks.append(_check(
                    f"latency p99 <= 1.5x pipe_chain's floor at {rate:,} msg/s ({name})",
                    combo, vs_floor.get(name), TARGETS["latency_vs_floor"], "<=",
                    value_w1=vs_floor.get("amqscale-bytes/w1")))
    checks += _ring_targets(document.get("micro", {}).get("ring", {}))
    return [c for c in checks if c is not None]


def _worse(sides: dict[str, float | None] | None) -> float | None:
    values = [v for v in (sides or {}).values() if v is not None]
    return max(values) if values else None


def _ring_targets(ring: dict[str, Any]) -> list[dict[str, Any] | None]:
    """ring_bench.py computes its own (ring >= 10 M/s batched, >= 2 M/s, >= 20x Queue)."""
    return [{"name": name, "combo": "ring", "value": t["value"], "target": t["target"],
             "op": ">=", "met": bool(t["met"])} for name, t in ring.get("targets", {}).items()]


# ---- the summary ----------------------------------------------------------------------------


def summary_name(document: dict[str, Any]) -> str:
    """summary-YYYYMMDD-<git short commit> (and -quick for a smoke run)."""
    date = str(document.get("started", ""))[:10].replace("-", "") or "undated"
    commit = (document.get("host") or {}).get("git") or "nocommit"
    quick = "-quick" if document.get("settings", {}).get("quick") else ""
    return f"summary-{date}-{commit}{quick}"


def _rounded(value: Any, digits: int = 4) -> Any:
    """Floats to `digits` significant digits, in dicts and lists too."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def _latency_brief(latency: dict[str, Any] | None) -> dict[str, Any] | None:
    if not latency:
        return None
    if latency.get("skipped") or latency.get("error"):
        return {k: latency[k] for k in ("target_rate", "skipped", "error") if k in latency}
    return {k: latency.get(k) for k in ("target_rate", "achieved_msg_per_s", "p50_us",
                                        "p99_us", "p99_9_us", "count", "label")
            if latency.get(k) is not None}


def summary(document: dict[str, Any], result_name: str | None = None) -> dict[str, Any]:
    """The small record of a run, to commit: settings, host, per case msg/s, MB/s, CPU per
    message per process, latency p50/p99 (half peak and fixed rates), the floors, the
    ratios, and each target with met / missed. No histograms, no per-run data."""
    cases: dict[str, Any] = {}
    for name, case in document["cases"].items():
        fixed = {rate: _latency_brief(lat)
                 for rate, lat in (case.get("latency_fixed") or {}).items()}
        cases[name] = {
            "msg_per_s": case.get("msg_per_s"), "mb_per_s": case.get("mb_per_s"),
            "cpu_us_per_msg": case.get("cpu_us_per_msg"),
            "cpu_us_per_msg_total": case.get("cpu_us_per_msg_total"),
            "runs_ok": case.get("runs_ok"), "lost": case.get("lost"),
            "duplicates": case.get("duplicates"), "errors": case.get("errors") or [],
            "latency_half_peak": _latency_brief(case.get("latency")),
            "latency_fixed": fixed or None,
        }
    floors = {}
    for key, floor in (document.get("latency_floor") or {}).items():
        brief = _latency_brief(floor)
        if brief is not None:
            floors[key] = {**brief, "processes": floor.get("processes")}
    checks = document.get("targets", [])
    host = document.get("host", {})
    return _rounded({
        "schema": SUMMARY_SCHEMA, "source": SCHEMA, "started": document.get("started"),
        "seconds": document.get("seconds"),
        "host": {k: host.get(k) for k in ("hostname", "cpus", "python", "proton", "git",
                                          "git_dirty", "load_average_start",
                                          "load_average_end")},
        "settings": document.get("settings"),
        "result": result_name,  # the full JSON it was made from (uncommitted)
        "cases": cases,
        "latency_floor": floors,
        "skipped_cases": document.get("skipped_cases") or {},
        "ratios": {combo: {k: v for k, v in r.items() if v is not None}
                   for combo, r in (document.get("ratios") or {}).items()},
        "targets": [{**t, "verdict": "PASS" if t["met"] else "MISS"} for t in checks],
        "verdict": {"met": sum(t["met"] for t in checks),
                    "missed": sum(not t["met"] for t in checks),
                    "missed_names": [f"{t['name']} [{t['combo']}]" for t in checks
                                     if not t["met"]]},
    })


# ---- printing -------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ",.1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k[:1]}:{_fmt(v, spec)}" for k, v in value.items()) or "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def case_table(document: dict[str, Any]) -> str:
    w = max([46, *(len(name) for name in document["cases"])])
    head = (f"{'case':<{w}} {'msg/s':>10} {'MB/s':>8} {'CPU us/msg':>10} {'sender':>7} "
            f"{'s.wrk':>6} {'recv':>7} {'r.wrk':>6} {'broker':>7} {'lost':>5} {'dup':>4} "
            f"{'p50 us':>8} {'p99 us':>8} {'p99.9':>8}")
    lines = ["per case (medians; CPU us per message by process; MB/s of bodies; latency "
             f"p50/p99/p99.9 at {HALF_PEAK_LABEL})", head, "-" * len(head)]
    for name, case in document["cases"].items():
        if not case.get("msg_per_s"):
            lines.append(f"{name:<{w}} ERROR {'; '.join(case.get('errors', []))[:120]}")
            continue
        cpu = case["cpu_us_per_msg"]
        workers = case["workers_us_per_msg"]
        lat = case.get("latency") or {}
        mb = case.get("mb_per_s", mb_per_s(case["msg_per_s"], case.get("body_bytes")))
        lines.append(
            f"{name:<{w}} {case['msg_per_s']:>10,.0f} {_fmt(mb, ',.1f'):>8} "
            f"{case['cpu_us_per_msg_total']:>10.2f} "
            f"{cpu['sender']:>7.2f} {_fmt(workers['sender'] or None, '.2f'):>6} "
            f"{cpu['receiver']:>7.2f} {_fmt(workers['receiver'] or None, '.2f'):>6} "
            f"{_fmt(cpu.get('broker'), '.2f'):>7} {case['lost']:>5} {case['duplicates']:>4} "
            f"{_fmt(lat.get('p50_us'), ',.0f'):>8} {_fmt(lat.get('p99_us'), ',.0f'):>8} "
            f"{_fmt(lat.get('p99_9_us'), ',.0f'):>8}")
    return "\n".join(lines)


# (field of ratios[combo], format, what it compares). "best W": amqscale's faster worker
# count; a field ending in _w1 is the same with 1 worker a side (one connection, credit
# 1000: the bare pair's and proton-python's configuration).
RATIO_ROWS = [
    ("bare_msg_per_s", ",.0f", "the bare engine pair (b), msg/s"),
    ("bare_mb_per_s", ",.1f", "the bare engine pair (b), MB/s of bodies"),
    ("proton_msg_per_s", ",.0f", "proton-python MessagingHandler pair, msg/s"),
    ("proton_mb_per_s", ",.1f", "proton-python pair, MB/s"),
    ("rhea_msg_per_s", ",.0f", "rhea sender -> rhea receiver, msg/s"),
    ("engine_loop_msg_per_s", ",.0f", "amqscale's Engine in a loop, no rings, no workers, msg/s"),
    ("amqscale_bytes_msg_per_s", ",.0f", "amqscale bytes, one per call, best W, msg/s"),
    ("amqscale_bytes_mb_per_s", ",.1f", "amqscale bytes, one per call, best W, MB/s"),
    ("amqscale_bytes_workers", "d", "amqscale bytes: the worker count compared (best W)"),
    ("amqscale_bytes_msg_per_s_w1", ",.0f", "amqscale bytes, one per call, 1 worker, msg/s"),
    ("bytes_pct_of_bare_pair", ".1f", "amqscale bytes best W / bare pair, msg/s, %"),
    ("bytes_pct_of_bare_pair_w1", ".1f", "amqscale bytes 1 worker / bare pair, msg/s, %"),
    ("bytes_batch_pct_of_bare_pair", ".1f", "amqscale bytes batch API best W / bare pair, %"),
    ("bytes_batch_pct_of_bare_pair_w1", ".1f", "the same, 1 worker a side, %"),
    ("bytes_vs_bare_mb_per_s", ".3f", "amqscale bytes best W / bare pair, MB/s (x)"),
    ("bytes_vs_bare_cpu_per_msg", ".2f", "amqscale bytes best W / bare pair, total CPU/msg"),
    ("worker_cpu_vs_bare_cpu", ".2f",
     "per side: amqscale workers' CPU/msg (1 worker) / bare pair's process CPU/msg"),
    ("worker_cpu_vs_bare_cpu_best", ".2f", "the same with best W (all of a side's workers)"),
    ("bare_cpu_us_per_msg", ".2f", "the bare pair's process CPU us/msg, per side"),
    ("engine_loop_pct_of_bare_pair", ".1f", "engine loop / bare pair, msg/s, %"),
    ("bytes_pct_of_engine_loop", ".1f", "amqscale bytes best W / engine loop, msg/s, %"),
    ("proton_pct_of_bare_pair", ".1f", "proton-python / bare pair, msg/s, %"),
    ("rhea_pct_of_bare_pair", ".1f", "rhea / bare pair, msg/s, %"),
    ("bytes_vs_proton_rate", ".2f", "amqscale bytes best W / proton-python, msg/s (x)"),
    ("bytes_vs_proton_rate_w1", ".2f", "amqscale bytes 1 worker / proton-python, msg/s (x)"),
    ("bytes_vs_proton_mb_per_s", ".2f", "amqscale bytes best W / proton-python, MB/s (x)"),
    ("bytes_vs_proton_cpu_per_msg", ".3f",
     "amqscale bytes best W / proton-python, total CPU/msg (x)"),
    ("bytes_vs_proton_cpu_per_msg_w1", ".3f", "the same, 1 worker (x)"),
    ("bytes_vs_rhea_rate", ".2f", "amqscale bytes best W / rhea pair, msg/s (x)"),
    ("bytes_vs_rhea_rate_w1", ".2f", "amqscale bytes 1 worker / rhea pair, msg/s (x)"),
    ("worker_cpu_vs_proton_cpu", ".3f",
     "per side: amqscale workers' CPU/msg best W / proton-python process CPU/msg"),
    ("worker_cpu_vs_proton_cpu_w1", ".3f", "the same, 1 worker"),
    ("messages_vs_proton_rate", ".2f",
     "amqscale Message (id+3 props) best W / proton-python same message, msg/s (x)"),
    ("messages_vs_proton_rate_w1", ".2f", "the same, 1 worker (x)"),
    ("bytes_batch_vs_proton_rate", ".2f", "amqscale bytes batch API best W / proton-python (x)"),
    ("bytes_batch_vs_proton_rate_w1", ".2f", "the same, 1 worker (x)"),
    ("messages_batch_vs_proton_rate", ".2f",
     "amqscale Message batch API best W / proton-python same message (x)"),
    ("messages_batch_vs_proton_rate_w1", ".2f", "the same, 1 worker (x)"),
    ("user_us_per_msg_bytes", ".2f", "amqscale bytes best W: user process CPU us/msg"),
    ("user_us_per_msg_messages", ".2f", "amqscale Message best W: user process CPU us/msg"),
    ("library_us_per_msg_bytes", ".2f", "bytes best W: the library's share us/msg"),
    ("library_us_per_msg_messages", ".2f", "Message best W: the library's share us/msg"),
    ("library_us_per_msg_bytes_batch", ".2f", "bytes batch API best W: library's share"),
    ("library_us_per_msg_bytes_batch_w1", ".2f", "the same, 1 worker"),
    ("library_us_per_msg_messages_batch", ".2f", "Message batch API best W: library's share"),
    ("library_us_per_msg_messages_batch_w1", ".2f", "the same, 1 worker"),
    ("tls_bytes_vs_proton_tls_rate", ".2f", "TLS: amqscale bytes / proton-python, both TLS (x)"),
    ("tls_bytes_vs_proton_tls_rate_w1", ".2f", "the same, amqscale 1 worker (x)"),
    ("tls_bytes_batch_vs_proton_tls_rate", ".2f", "TLS: bytes batch API / proton-python TLS"),
    ("tls_bytes_msg_per_s", ",.0f", "TLS: amqscale bytes msg/s"),
    ("tls_proton_msg_per_s", ",.0f", "TLS: proton-python msg/s"),
    ("tls_vs_plain_bytes_rate", ".3f", "TLS's cost: amqscale bytes TLS / plain, msg/s"),
    ("tls_vs_plain_bytes_batch_rate", ".3f", "TLS's cost: bytes batch API TLS / plain"),
    ("tls_vs_plain_proton_rate", ".3f", "TLS's cost: proton-python TLS / plain, msg/s"),
    ("tls_vs_plain_bytes_cpu_per_msg", ".3f", "TLS's cost: amqscale bytes, total CPU/msg"),
    ("tls_vs_plain_bytes_batch_cpu_per_msg", ".3f", "TLS's cost: bytes batch API, CPU/msg"),
    ("tls_vs_plain_proton_cpu_per_msg", ".3f", "TLS's cost: proton-python, CPU/msg"),
    ("tls_extra_cpu_us_per_msg_bytes", ".2f", "TLS adds, us/msg: amqscale bytes, per side"),
    ("tls_extra_cpu_us_per_msg_bytes_batch", ".2f", "TLS adds, us/msg: bytes batch API"),
    ("tls_extra_cpu_us_per_msg_proton", ".1f", "TLS adds, us/msg: proton-python"),
    ("tls_bytes_workers", "d", "TLS: amqscale workers compared"),
    ("tls_bytes_batch_workers", "d", "TLS: batch API workers compared"),
    ("aio_vs_blocking_bytes_rate", ".3f", "asyncio face / blocking face, bytes, msg/s"),
    ("aio_vs_blocking_bytes_cpu_per_msg", ".3f", "asyncio / blocking, bytes, total CPU/msg"),
    ("aio_vs_blocking_bytes_batch_rate", ".3f", "asyncio / blocking, batch API, msg/s"),
    ("aio_vs_blocking_bytes_batch_cpu_per_msg", ".3f", "asyncio / blocking, batch, CPU/msg"),
    ("reactor_vs_proton_rate", ".2f",
     "event-driven face / proton-python, the same MessagingHandler code, msg/s (x)"),
    ("reactor_vs_proton_cpu_per_msg", ".3f", "the same, total CPU/msg (x)"),
    ("reactor_vs_blocking_bytes_rate", ".3f", "event-driven face / blocking bytes, msg/s"),
    ("reconnect_on_vs_off_rate", ".3f", "reconnect's cost: bytes reconnect on / off, msg/s"),
    ("reconnect_on_vs_off_cpu_per_msg", ".3f", "reconnect's cost: on / off, total CPU/msg"),
    ("reconnect_on_vs_off_extra_cpu_us_per_msg", ".2f", "reconnect adds, us/msg (total)"),
    ("rabbitmq_amqscale_vs_proton_rate", ".2f", "RabbitMQ: amqscale best W / proton-python"),
    ("rabbitmq_amqscale_vs_proton_rate_w1", ".2f", "RabbitMQ: the same, 1 worker"),
    ("rabbitmq_broker_cpu_us_per_msg", ".1f", "RabbitMQ: broker CPU us/msg with each client"),
    ("proton_c_broker_amqscale_vs_proton_rate", ".2f",
     "C broker: amqscale best W / proton-python, msg/s (x)"),
    ("proton_c_broker_amqscale_vs_c_examples_rate", ".2f",
     "C broker: amqscale best W / the C send/receive examples, msg/s (x)"),
    ("proton_c_broker_amqscale_vs_c_examples_rate_w1", ".2f", "the same, 1 worker (x)"),
    ("proton_c_broker_c_examples_msg_per_s", ",.0f", "C broker: the C examples, msg/s"),
    ("proton_c_broker_broker_cpu_us_per_msg", ".1f", "C broker: broker CPU us/msg"),
    ("proton_c_broker_inworker_msg_per_s", ",.0f", "C broker: in-worker handler receiver, msg/s"),
    ("proton_c_broker_inworker_vs_bytes_rate", ".3f",
     "C broker: in-worker handler receiver / blocking bytes receiver, msg/s"),
    ("proton_c_broker_inworker_vs_bytes_cpu_per_msg", ".3f", "the same, total CPU/msg"),
    ("proton_c_broker_inworker_receiver_cpu_us_per_msg", ".2f",
     "C broker: in-worker receiver side (process + workers) us/msg"),
]


def ratio_table(document: dict[str, Any]) -> str:
    combos = list(document.get("ratios", {}))
    if not combos:
        return ""
    key_w = 44
    width = max(22, *(len(c) + 2 for c in combos))
    lines = [f"{'ratio (field)':<{key_w}}" + "".join(f"{c:>{width}}" for c in combos)
             + "  compares"]
    for key, spec, compares in RATIO_ROWS:
        cells = [_fmt(document["ratios"][c].get(key), spec) for c in combos]
        if any(cell != "-" for cell in cells):
            lines.append(f"{key:<{key_w}}" + "".join(f"{cell:>{width}}" for cell in cells)
                         + f"  {compares}")
    families = sorted({f for c in combos for f in document["ratios"][c]["latency_p99_us"]})
    for family in families:
        cells = [_fmt(document["ratios"][c]["latency_p99_us"].get(family), ",.0f")
                 for c in combos]
        lines.append(f"{'latency_p99_us ' + family:<{key_w}}"
                     + "".join(f"{cell:>{width}}" for cell in cells)
                     + f"  p99 us at half peak ({HALF_PEAK_LABEL})")
    for rate, key in FIXED_RATES.items():
        names = sorted({f for c in combos
                        for f in (document["ratios"][c].get(f"latency_p99_vs_floor_{key}")
                                  or {})})
        for name in names:
            cells = [_fmt((document["ratios"][c].get(f"latency_p99_vs_floor_{key}") or {}
                           ).get(name), ".2f") for c in combos]
            lines.append(f"{f'latency_p99_vs_floor_{key} ' + name:<{key_w}}"
                         + "".join(f"{cell:>{width}}" for cell in cells)
                         + f"  p99 at {rate:,} msg/s / pipe_chain.py's p99, same processes")
    return "\n".join(lines)


def latency_table(document: dict[str, Any]) -> str:
    """The fixed-rate passes: each case's p50/p99/p99.9 against the floor's p99 for as many
    processes, at the same rate, in the same run; and what was skipped, why."""
    floors = document.get("latency_floor") or {}
    rows = []
    for name, case in document["cases"].items():
        for rate, lat in (case.get("latency_fixed") or {}).items():
            rows.append((name, case, int(rate), lat))
    if not rows and not floors:
        return ""
    w = max([46, *(len(r[0]) for r in rows)])
    head = (f"{'latency at fixed rates':<{w}} {'rate':>7} {'p50 us':>8} {'p99 us':>8} "
            f"{'p99.9':>8} {'floor p99':>10} {'p99/floor':>9}")
    lines = [head, "-" * len(head)]
    for key, floor in floors.items():
        if floor.get("p99_us") is None:
            lines.append(f"{'pipe_chain.py ' + key:<{w}} ERROR {floor.get('error')}")
            continue
        lines.append(f"{'pipe_chain.py --hops ' + str(floor['hops']) + ' (floor)':<{w}} "
                     f"{floor['rate']:>7,} {floor['p50_us']:>8,.0f} {floor['p99_us']:>8,.0f} "
                     f"{floor['p99_9_us']:>8,.0f}")
    for name, case, rate, lat in rows:
        if lat.get("skipped") or lat.get("p99_us") is None:
            why = lat.get("skipped") or lat.get("error")
            lines.append(f"{name:<{w}} {rate:>7,} skipped: {why}")
            continue
        hops = 3 if case["family"].startswith("amqscale") else 1
        floor = floors.get(floor_key(hops, rate)) or {}
        lines.append(
            f"{name:<{w}} {rate:>7,} {lat['p50_us']:>8,.0f} {lat['p99_us']:>8,.0f} "
            f"{lat['p99_9_us']:>8,.0f} {_fmt(floor.get('p99_us'), ',.0f'):>10} "
            f"{_fmt(_ratio(lat['p99_us'], floor.get('p99_us')), '.2f'):>9}")
    return "\n".join(lines)


def target_table(document: dict[str, Any]) -> str:
    checks = document.get("targets", [])
    w = max([62, *(len(t["name"]) for t in checks)])
    lines = [f"{'target':<{w}} {'combo':<20} {'value':>12} {'1 worker':>10} {'target':>10}"
             "  verdict"]
    for t in checks:
        verdict = "PASS" if t["met"] else "MISS"
        other = t.get("value_w1", t.get("value_best"))
        lines.append(f"{t['name']:<{w}} {t['combo']:<20} {t['value']:>12,.3f} "
                     f"{_fmt(other, ',.3f'):>10} {t['op']} {t['target']:>7,.3f}  {verdict}")
    met = sum(t["met"] for t in checks)
    lines.append(f"{met} of {len(checks)} targets met ('1 worker': the same figure with 1 "
                 "worker a side; for the worker CPU vs the bare pair, whose value is the "
                 "1-worker one, the faster worker count's)")
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
    parts = ["", case_table(document), "", latency_table(document), "",
             ratio_table(document), "", target_table(document), "", micro_table(document)]
    return "\n".join(parts)


# ---- the chart ------------------------------------------------------------------------------


def chart(document: dict[str, Any], path: Path) -> bool:
    """Rate, CPU per message by process and latency (half peak; fixed rates against the
    floor), per case, as one PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = {k: c for k, c in document["cases"].items() if c.get("msg_per_s")}
    if not cases:
        return False
    names = list(cases)
    with_latency = [k for k in names if (cases[k].get("latency") or {}).get("p99_us")]
    fixed = [(k, rate) for k in names
             for rate, lat in (cases[k].get("latency_fixed") or {}).items()
             if lat.get("p99_us") is not None]
    small = [k for k in names if (cases[k].get("body_bytes") or 0) <= LARGE_BODY]
    large = [k for k in names if k not in small]
    panels: list[tuple[str, list[str]]] = [("rate", names)]
    panels += [("cpu", small)] if small else []
    panels += [("cpu-large", large)] if large else []
    if with_latency:
        panels.append(("latency", with_latency))
    if fixed:
        panels.append(("fixed", [f"{k} @ {int(rate):,}/s" for k, rate in fixed]))
    rows = [len(labels) for _, labels in panels]
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.5 * len(rows) + 0.22 * sum(rows)),
                             gridspec_kw={"height_ratios": [r + 2 for r in rows]})
    y = list(range(len(names)))
    for ax, (kind, labels) in zip(axes, panels, strict=True):
        if kind == "rate":
            ax.barh(y, [cases[k]["msg_per_s"] for k in names], color="tab:blue")
            ax.set_xscale("log")
            ax.set_xlabel("messages / s (log), median of the runs; MB/s of bodies beside")
            for i, k in enumerate(names):
                mb = cases[k].get("mb_per_s")
                if mb:
                    ax.text(cases[k]["msg_per_s"], i, f" {mb:,.1f} MB/s", va="center",
                            fontsize=6)
        elif kind.startswith("cpu"):
            _cpu_bars(ax, cases, labels, list(range(len(labels))))
            if kind == "cpu-large":
                ax.set_xlabel(f"CPU microseconds / message, by process: bodies above "
                              f"{LARGE_BODY:,} bytes")
        elif kind == "latency":
            _latency_bars(ax, cases, with_latency)
        else:
            _fixed_bars(ax, document, cases, fixed)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    # The run's size, not "full": a run of chosen cases (--cases) must not read as the whole.
    groups = document["settings"]["groups"]
    kind = ("quick smoke run" if document["settings"]["quick"] else
            f"{len(document['cases'])} cases" + (f": {', '.join(groups)}" if len(groups) < 10
                                                   else ""))
    host = document.get("host", {})
    fig.suptitle(f"amqscale perf/compare.py, {document['started']} ({kind}), "
                 f"commit {host.get('git', '?')}, {host.get('cpus', '?')} cpus")
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
    ax.set_xlabel(f"CPU microseconds / message, by process: bodies of at most {LARGE_BODY:,} "
                  "bytes")
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
    ax.set_xlabel(f"latency at half peak, microseconds (log); {HALF_PEAK_LABEL}; "
                  "1 ms target dashed")
    ax.axvline(1000, color="black", linewidth=0.8, linestyle="--")
    ax.legend(fontsize=7)


def _fixed_bars(ax: Any, document: dict[str, Any], cases: dict[str, Any],
                fixed: list[tuple[str, str]]) -> None:
    """p50 and p99 at each fixed rate, and the floor's p99 (same processes, same rate) with
    1.5 times it, the target, as ticks."""
    floors = document.get("latency_floor") or {}
    y = list(range(len(fixed)))
    lats = [cases[k]["latency_fixed"][rate] for k, rate in fixed]
    ax.barh([v - 0.2 for v in y], [lat["p50_us"] for lat in lats], height=0.4, label="p50")
    ax.barh([v + 0.2 for v in y], [lat["p99_us"] for lat in lats], height=0.4, label="p99")
    for i, (k, rate) in enumerate(fixed):
        hops = 3 if cases[k]["family"].startswith("amqscale") else 1
        floor = (floors.get(floor_key(hops, int(rate))) or {}).get("p99_us")
        if floor:
            ax.plot([floor, floor], [i - 0.45, i + 0.45], color="black", linewidth=1.2,
                    label="pipe_chain p99 (floor)" if i == 0 else None)
            ax.plot([1.5 * floor] * 2, [i - 0.45, i + 0.45], color="red", linewidth=0.8,
                    linestyle="--", label="1.5x floor (target)" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("latency at fixed rates, microseconds (log), against perf/pipe_chain.py's "
                  "floor for as many processes")
    ax.legend(fontsize=7)
