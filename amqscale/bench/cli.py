"""`amqscale bench [send|receive]`: the command line of the load generator.

Exit status: 0 when the run passed, 1 when it ran but failed (a message lost or
duplicated, an outcome other than accepted, nothing received, or a --max-p99 / --min-rate
threshold missed), 2 when it could not run (a bad option, a connection refused, an agent
that failed).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import AMQPError
from .config import DEFAULT_COUNT, BenchConfig
from .schedule import parse_seconds

EXAMPLES = """\
examples:
  amqscale bench                                   peer-to-peer, 200,000 x 100 B, all-out
  amqscale bench --rate 20000 --duration 30 --warmup 5 --json run.json --plot run.png
  amqscale bench --url amqp://127.0.0.1:5672 --address 'q%d' --addresses 4 -x 4 -y 4
  amqscale bench --rate 1000:10,5000:10,20000:10  rate steps, rate:seconds
  amqscale bench receive --url amqp://broker/q --count 100000    on one host ...
  amqscale bench send --url amqp://broker/q --count 100000 --rate 5000   ... and another
  amqscale bench --agents 3                        agents on a local Dask cluster
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _natural(text: str) -> int:
    return 0 if text.strip() == "0" else _positive(text)


def _seconds(text: str) -> float:
    try:
        return parse_seconds(text, "duration")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("duration: ")) from None


def _latency_us(text: str) -> float:
    """"5ms", "500us", "0.2s"; a bare number is milliseconds."""
    body = text.strip()
    try:
        if body.endswith("us"):
            return float(body[:-2])
        if body.endswith(("ms", "s", "m")):
            return parse_seconds(body, "latency") * 1e6
        return float(body) * 1000
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a latency (say 5ms or 500us)"
                                         ) from None


def _property(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def add_parser(commands: Any) -> None:
    bench = commands.add_parser(
        "bench", help="the load generator: rates, latency, loss checks (peer-to-peer or "
                      "through a broker)",
        description="Runs producer and consumer agents (each a process with its own "
                    "workers), prints a line a second and a summary, checks every message "
                    "for loss, duplication and order. " + __doc__.split("\n\n", 1)[1],
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("role", nargs="?", choices=("send", "receive"),
                       help="only the producers (send) or only the consumers (receive), "
                            "for separate hosts; default both")
    where = bench.add_argument_group("where")
    where.add_argument("--url", help="a broker's amqp:// or amqps:// URL (default: "
                                     "peer-to-peer, the consumers listen on 127.0.0.1)")
    where.add_argument("--listen-host", default="127.0.0.1",
                       help="peer-to-peer: the address consumers listen on (::1 for IPv6; "
                            "a reachable one when agents run on other hosts)")
    where.add_argument("--address", default="amqscale-bench",
                       help="the queue or topic; a %%d in it is numbered (see --addresses)")
    where.add_argument("--addresses", type=_positive, default=1, metavar="N",
                       help="N addresses, --address with %%d = 0..N-1, dealt to the agents")
    secure = bench.add_argument_group(
        "security", "a user and password go in the URL: amqps://USER:PASSWORD@HOST:PORT")
    secure.add_argument("--tls-ca", metavar="PEM", help="the CA to trust (default the "
                                                        "system's)")
    secure.add_argument("--tls-cert", metavar="PEM",
                        help="a client certificate; peer-to-peer, the consumers' listeners' "
                             "certificate (they listen on amqps://)")
    secure.add_argument("--tls-key", metavar="PEM", help="its private key (default: in "
                                                         "--tls-cert)")
    secure.add_argument("--tls-verify", choices=("peer-name", "peer", "none"),
                        help="how the server's certificate is checked (default peer-name)")
    secure.add_argument("--sasl-mechanisms", metavar="NAMES",
                        help="the SASL mechanisms to allow, e.g. 'SCRAM-SHA-256 PLAIN'")
    secure.add_argument("--allow-insecure-mechanisms", action="store_true",
                        help="allow PLAIN over a connection without TLS")
    who = bench.add_argument_group("agents")
    who.add_argument("-x", "--producers", type=_positive, default=1)
    who.add_argument("-y", "--consumers", type=_positive, default=1)
    who.add_argument("--connections", "--shards", type=_positive, default=1,
                     dest="connections", help="AMQP connections of each producer and consumer")
    who.add_argument("--workers", type=_positive, default=1,
                     help="worker processes of each producer and consumer")
    who.add_argument("--agents", type=_positive, metavar="N",
                     help="run the agents on a local Dask cluster of N workers "
                          "(pip install amqscale[cluster])")
    who.add_argument("--scheduler", metavar="URL",
                     help="run the agents on an existing Dask cluster (tcp://HOST:8786)")
    load = bench.add_argument_group("load")
    load.add_argument("-C", "--count", type=_positive,
                      help=f"messages in all, split over the producers (default "
                           f"{DEFAULT_COUNT:,} without --duration)")
    load.add_argument("-d", "--duration", "-z", "--time", type=_seconds, dest="duration",
                      help="seconds to send after the warm-up (10, 10s, 2m)")
    load.add_argument("--warmup", type=_seconds, default=0.0,
                      help="seconds at the start left out of the results")
    load.add_argument("-r", "--rate", help="TOTAL msg/s over all producers (each sends "
                                           "rate/producers); or steps RATE:SECONDS,... "
                                           "(the last rate holds); default all-out")
    load.add_argument("--ramp", type=_seconds, default=0.0,
                      help="seconds to ramp up linearly from 0 to the (first) rate")
    load.add_argument("--max-in-flight", type=_positive, default=1000,
                      help="unsettled messages of each producer (its connections' windows)")
    load.add_argument("--credit", type=_positive, default=1000,
                      help="each consumer link's credit (prefetch)")
    load.add_argument("--batch", type=_positive, metavar="N",
                      help="send_many / receive_many of N (default one message per call)")
    load.add_argument("--tx-size", type=_natural, default=0, metavar="N",
                      help="send in local transactions of N messages (a broker with a "
                           "transaction coordinator)")
    body = bench.add_argument_group("messages")
    body.add_argument("-s", "--size", default="100",
                      help="body bytes: 100, a range 100-1000 (uniform), or weighted "
                           "sizes 100:80,1000:20; at least 36 (the stamp)")
    body.add_argument("--body-content", choices=("zeros", "random", "text"),
                      default="zeros", help="what fills the body after the stamp")
    body.add_argument("--messages", action="store_true",
                      help="Message objects (id + properties), not bare bytes")
    body.add_argument("-P", "--property", type=_property, action="append", default=[],
                      dest="properties", metavar="KEY=VALUE",
                      help="an application property (ints, floats, true/false are typed)")
    body.add_argument("--durable", action="store_true", help="durable messages")
    body.add_argument("--ttl", type=_natural, metavar="MS", help="time to live, ms")
    body.add_argument("--presettled", "--at-most-once", action="store_true",
                      dest="presettled", help="at-most-once (default at-least-once)")
    checks = bench.add_argument_group("checks and output")
    checks.add_argument("--timeout", type=_seconds, default=10.0,
                        help="consumers give up after this long without a message")
    checks.add_argument("--max-p99", type=_latency_us, metavar="LATENCY",
                        help="fail (exit 1) when latency p99 is above it (5ms, 500us)")
    checks.add_argument("--min-rate", type=float, metavar="MSG/S",
                        help="fail (exit 1) when the received rate is below it")
    checks.add_argument("--json", metavar="PATH", help="the whole run as JSON "
                                                       "(docs/bench.md has the schema)")
    checks.add_argument("--csv", metavar="PATH", help="one row a second")
    checks.add_argument("--hdr-log", metavar="PATH",
                        help="an HdrHistogram interval log (HistogramLogProcessor reads it)")
    checks.add_argument("--percentiles", metavar="PATH",
                        help="the latency percentile distribution (.hgrm, as wrk2 -L)")
    checks.add_argument("--plot", metavar="PNG", help="rate over time and latency "
                                                      "percentiles, as a picture")
    checks.add_argument("-q", "--quiet", action="store_true", help="no line a second")
    checks.add_argument("--run-id", type=_natural, metavar="N",
                        help="the run id stamped in every message (default random); "
                             "consumers count other runs' messages as stale")
    bench.set_defaults(run=main)


def config_of(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        url=args.url, listen_host=args.listen_host, address=args.address, addresses=args.addresses,
        producers=args.producers, consumers=args.consumers, connections=args.connections,
        workers=args.workers, count=args.count, duration=args.duration, warmup=args.warmup,
        rate=args.rate, ramp=args.ramp, size=args.size, body_content=args.body_content,
        messages=args.messages, properties=dict(args.properties), durable=args.durable,
        ttl=args.ttl, presettled=args.presettled, credit=args.credit,
        max_in_flight=args.max_in_flight, batch=args.batch or 0, tx_size=args.tx_size,
        timeout=args.timeout, max_p99=args.max_p99, min_rate=args.min_rate,
        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_verify=args.tls_verify, sasl_mechanisms=args.sasl_mechanisms,
        allow_insecure_mechanisms=args.allow_insecure_mechanisms,
        **({} if args.run_id is None else {"seed": args.run_id}))


def _roles(args: argparse.Namespace) -> tuple[str, ...]:
    if args.role == "send":
        if args.url is None:
            raise ValueError("bench send needs --url: a broker, or the listener a "
                             "`bench receive` printed")
        return ("producer",)
    if args.role == "receive":
        return ("consumer",)
    return ("consumer", "producer")


def _launcher(args: argparse.Namespace) -> Any:
    if args.agents is None and args.scheduler is None:
        return None
    from .cluster import DaskLauncher  # an optional extra: amqscale[cluster]

    return DaskLauncher(scheduler=args.scheduler, local_workers=args.agents)


def _print_listeners(ready: dict[str, dict[str, Any]]) -> None:
    for agent, report in sorted(ready.items()):
        if report.get("url") and agent.startswith("consumer"):
            print(f"{agent} listening on {report['url']}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    try:
        from .coordinator import BenchError, run
        from .live import LiveView
    except ImportError as exc:
        return _missing_extra(exc)
    try:
        config = config_of(args)
        roles = _roles(args)
        config.check()
        _check_outputs(args)
        launcher = _launcher(args)
        on_ready = _print_listeners if roles == ("consumer",) and args.url is None else None
        report = run(config, roles=roles, launcher=launcher,
                     observer=LiveView(quiet=args.quiet), on_ready=on_ready)
    except ImportError as exc:
        return _missing_extra(exc)
    except (ValueError, BenchError, AMQPError, OSError) as exc:
        print(f"amqscale bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("amqscale bench: interrupted", file=sys.stderr)
        return 130
    try:
        _write_outputs(args, report)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"amqscale bench: {exc}", file=sys.stderr)
        return 2
    return 0 if report.summary.passed else 1


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written before the run, not after it."""
    for option in ("json", "csv", "hdr_log", "percentiles", "plot"):
        path = getattr(args, option)
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ValueError(f"--{option.replace('_', '-')} {path}: {folder} is not a "
                             "folder that can be written")
    if args.plot:
        import matplotlib  # noqa: F401  (an ImportError here names the extra to install)


def _missing_extra(exc: ImportError) -> int:
    print(f"amqscale bench: {exc}; the bench needs its extra: pip install 'amqscale[bench]' "
          "('amqscale[cluster]' for --agents and --scheduler)", file=sys.stderr)
    return 2


def _write_outputs(args: argparse.Namespace, report: Any) -> None:
    from . import output

    writers = ((args.json, output.write_json), (args.csv, output.write_csv),
               (args.hdr_log, output.write_hdr_log), (args.percentiles,
                                                      output.write_percentiles),
               (args.plot, output.plot))
    for path, write in writers:
        if path:
            write(report, path)

