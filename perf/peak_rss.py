"""Peak resident memory of every process of a command's tree, sampled while it runs.

    .venv/bin/python perf/peak_rss.py -- .venv/bin/amqscale bench --size 100000000 --count 3

For the claim that a large message costs each process at most a few times its size: the
user processes and each worker get a row (VmHWM where the kernel still has it, else the
largest RSS sampled every 20 ms). The command's own output passes through.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time

import psutil


def _role(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        line = " ".join(proc.cmdline())
        if "amqscale.workers" in line:
            parent = proc.parent()
            return f"worker of the {_role(parent).split(' ')[0]}" if parent else "worker"
        if "resource_tracker" in line:
            return "resource tracker"
        if "spawn_main" in line:
            return "receiver (user process)"
        return "sender (user process)" if "bench" in line else line[:40]
    return "?"


def _high_water(proc: psutil.Process) -> int:
    """VmHWM: the kernel's own peak for the process, in bytes (0 if gone)."""
    with contextlib.suppress(OSError), open(f"/proc/{proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peaks: dict[int, tuple[str, int]] = {}
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):
            for proc in [root, *root.children(recursive=True)]:
                role, peak = peaks.get(proc.pid, (_role(proc), 0))
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, proc.memory_info().rss, _high_water(proc))
                peaks[proc.pid] = (role, peak)
        time.sleep(0.02)
    for pid, (role, peak) in sorted(peaks.items(), key=lambda item: item[1]):
        print(f"peak RSS {peak / 2**20:8.1f} MiB  {role} (pid {pid})")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
