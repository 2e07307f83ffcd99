"""Run dbfleet's benchmarks; print medians and ratios against the baselines they must beat.

    python3 dev.py bench                        # every benchmark
    python3 dev.py bench -- --quick             # a smoke test: few rounds, a few seconds
    python3 dev.py bench -- routing --check     # one benchmark; exit 1 if a target is missed

Each benchmark is a module in bench/ with a one-line docstring and
``run(quick: bool) -> bool`` (whether its targets were met); list it in BENCHMARKS.
A benchmark that cannot run here (no PostgreSQL, say) raises ``timing.Unavailable``:
it is skipped with the reason, or fails the run with ``--require``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: name -> module; run in this order.
BENCHMARKS = {
    "routing": "bench.routing",
    "migrate": "bench.migrate",
    "replicas": "bench.replicas",
    "transactions": "bench.transactions",
    "sharding": "bench.sharding",
    "fleet_ids": "bench.fleet_ids",
    "analytics": "bench.analytics",
    "moving": "bench.moving",
}


def setup() -> None:
    """Import the benchmarks as the ``bench`` package and start Django with bench settings."""
    # Run as a script, Python puts bench/ itself first on sys.path, where a module
    # named like a library (say bench/rich.py) would shadow it; import from the root.
    if sys.path and Path(sys.path[0]).resolve() == HERE:
        del sys.path[0]
    # src/ first: time the working tree's dbfleet even if the venv installed another.
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    # The benchmarks need their own settings, whatever the shell has exported.
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 dev.py bench --", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "names", nargs="*", metavar="name", help=f"benchmarks to run: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--require",
        action="store_true",
        help="exit 1 if a benchmark cannot run here (a server is missing) instead of skipping it",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup()
    import django

    from bench.timing import Unavailable, console

    if args.list:
        for name, module in BENCHMARKS.items():
            doc = importlib.import_module(module).__doc__ or ""
            console.print(doc.strip().splitlines()[0] if doc else name)
        return 0
    console.print(
        f"dbfleet benchmarks, {datetime.date.today()}: Python {platform.python_version()}, "
        f"Django {django.get_version()}, {os.cpu_count()} CPUs"
        + (" (--quick: too few rounds to trust the last digit)" if args.quick else "")
    )
    started = time.monotonic()
    missed: list[str] = []
    skipped: list[str] = []
    for name in args.names or BENCHMARKS:
        begun = time.monotonic()
        try:
            met = importlib.import_module(BENCHMARKS[name]).run(args.quick)
        except Unavailable as error:
            if args.require:
                console.print(f"[red]{name}: cannot run: {error}[/red]")
            else:
                console.print(f"[yellow]{name}: skipped: {error}[/yellow]")
            skipped.append(name)
            continue
        if not met:
            missed.append(name)
        console.print(f"({name}: {time.monotonic() - begun:.1f} s)")
    elapsed = time.monotonic() - started
    failed = False
    if skipped:
        word = "Could not run" if args.require else "Skipped"
        console.print(f"[yellow]{word}: {', '.join(skipped)}[/yellow] (the reasons are above)")
        failed = args.require
    if missed:
        quick = " (--quick: too few rounds to judge a target)" if args.quick else ""
        console.print(f"[red]Targets missed in: {', '.join(missed)}[/red]{quick} ({elapsed:.0f} s)")
        failed = failed or args.check
    elif not skipped:
        console.print(f"[green]Every target met.[/green] ({elapsed:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
