"""Before and after: the same peer-to-peer amqscale cases from two source trees, interleaved.

    .venv/bin/python perf/ab.py --before REV [--after REV] [--runs 3] [--count N]
                                [--sizes 100,4096] [--workers 1,2] [--families ...]

A change that touches the hot path is judged by this: each case (one message per call and
batches, by body size and workers a side) runs from the tree at `--before` and from the
tree at `--after` (default: this working tree) in alternating order, run after run, so that
the machine's drift from minute to minute falls on both alike. Figures are medians of
`--runs`; the ratios are after / before, of msg/s, of the CPU the sending and the
receiving user process spend per message less the harness's own work (the library's
share: less noisy than msg/s on a shared machine), and of each side's workers' CPU per
message. Trees other than this one are checked
out with `git worktree` in a temporary directory and their C extensions built there.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import compare  # perf/compare.py: Case, run_pair
import compare_report as report

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FAMILIES = ["amqscale-bytes", "amqscale-bytes-batch"]


@contextlib.contextmanager
def source_tree(rev: str | None, scratch: Path) -> Iterator[Path]:
    """This tree (rev None), or `rev` checked out and built under `scratch`."""
    if rev is None:
        yield REPO_ROOT
        return
    path = scratch / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "-q",
                    str(path), rev], check=True)
    try:
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                       cwd=path, check=True, stdout=subprocess.DEVNULL)
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force",
                        str(path)], check=False)


FIGURES = ("msg/s", "sender us", "receiver us", "sender workers us", "receiver workers us")


def measure(case: compare.Case, count: int, root: Path, logdir: Path) -> tuple[float, ...]:
    """msg/s, the library's CPU us per message in the sending and receiving process, and
    the CPU us per message of each side's workers."""
    raw = compare.run_pair(case, count, 0.0, None, logdir, root=root)
    figures = report.run_figures(count, raw)
    if figures["lost"] or figures["duplicates"] or figures["error"]:
        raise RuntimeError(f"{case.id} from {root}: {figures}")
    library, workers = figures["library_us_per_msg"], figures["workers_us_per_msg"]
    return (float(figures["msg_per_s"]), library["sender"], library["receiver"],
            workers["sender"], workers["receiver"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision of the reference")
    ap.add_argument("--after", help="git revision (default: this working tree)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=200_000, help="messages per run (100 B)")
    ap.add_argument("--sizes", default="100,4096")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--families", nargs="+", default=DEFAULT_FAMILIES,
                    choices=[f for f in compare.FAMILIES if f.startswith("amqscale")])
    args = ap.parse_args(argv)
    cases = [compare.Case(family, "p2p", int(size), False, int(workers))
             for family in args.families for size in args.sizes.split(",")
             for workers in args.workers.split(",")]
    results: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    with tempfile.TemporaryDirectory(prefix="amqscale-ab-") as scratch, \
            source_tree(args.before, Path(scratch)) as before, \
            source_tree(args.after, Path(scratch)) as after:
        logdir = Path(scratch)
        trees = {"before": before, "after": after}
        for run in range(args.runs):
            for case in cases:
                count = args.count if case.size <= compare.LARGE_BODY else args.count // 4
                order = ["before", "after"] if run % 2 == 0 else ["after", "before"]
                for side in order:
                    got = measure(case, count, trees[side], logdir)
                    results.setdefault((case.id, side), []).append(got)
                    print(f"run {run + 1} {case.id} {side}: {got[0]:,.0f} msg/s, library "
                          f"{got[1]:.2f} / {got[2]:.2f} us, workers {got[3]:.2f} / "
                          f"{got[4]:.2f} us", flush=True)
    print(f"\n{'case':<45} " + "  ".join(f"{f + ' before/after/ratio':>30}" for f in FIGURES))
    for case in cases:
        row = []
        for i in range(len(FIGURES)):
            old = statistics.median(r[i] for r in results[(case.id, "before")])
            new = statistics.median(r[i] for r in results[(case.id, "after")])
            row.append(f"{old:>11,.2f} {new:>11,.2f} {new / old:>6.3f}")
        print(f"{case.id:<45} " + "  ".join(row))


if __name__ == "__main__":
    main()
