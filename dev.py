"""Set up and run dbfleet's development tasks with nothing but Python 3.11+.

    python3 dev.py demo    # the bookstore example, on SQLite files
    python3 dev.py test    # lint, types, the suite on every engine, coverage
    python3 dev.py bench   # the benchmarks, printing ratios

Each task creates (or refreshes) a virtual environment from the locked
requirements in requirements/ before it runs, so a fresh clone needs no setup.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = ROOT / "requirements"
REPORTS = ROOT / ".reports"
CONFIGURATIONS = ("sqlite", "postgres", "mysql", "mixed", "replication")
MYSQL_HELP = (
    "mysqlclient could not be built, so the MariaDB tests will be skipped. It needs the "
    "MariaDB client headers: apt-get install libmariadb-dev pkg-config (Debian/Ubuntu)."
)


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m" if sys.stdout.isatty() else f"==> {message}", flush=True)


def run(*command: str | Path, env: dict[str, str] | None = None, check: bool = True) -> int:
    code = subprocess.call([str(part) for part in command], cwd=ROOT, env=env)
    if check and code:
        sys.exit(code)
    return code


def ensure_venv(python: str, path: Path, lock: Path) -> Path:
    """Create or refresh a virtual environment from ``lock``; return its interpreter."""
    bin_python = path / "bin" / "python"
    stamp = path / ".dbfleet-lock"
    wanted = hashlib.sha256(
        lock.read_bytes() + (REQUIREMENTS / "mysql.txt").read_bytes() + sys.version.encode()
    ).hexdigest()
    if bin_python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return bin_python
    say(f"Installing {lock.relative_to(ROOT)} into {path.relative_to(ROOT)}")
    if Path(python).resolve() == Path(sys.executable).resolve():
        venv.create(path, with_pip=True, clear=True)
    else:
        run(python, "-m", "venv", "--clear", path)
    pip = (bin_python, "-m", "pip", "--disable-pip-version-check", "--quiet")
    run(*pip, "install", "--upgrade", "pip")
    run(*pip, "install", "--requirement", lock)
    run(*pip, "install", "--no-deps", "--editable", ROOT)
    if run(*pip, "install", "--requirement", REQUIREMENTS / "mysql.txt", check=False):
        say(MYSQL_HELP)
    stamp.write_text(wanted)
    return bin_python


def other_pythons() -> list[str]:
    """Interpreters >= 3.12 on this machine (on PATH or under pyenv), for Django 6."""
    found: list[str] = []
    candidates = [shutil.which(f"python3.{minor}") for minor in range(12, 16)]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.1[2-9]*/bin/python3"))
    for candidate in candidates:
        if (
            candidate
            and subprocess.call(
                [candidate, "-c", "import sys, venv; assert sys.version_info >= (3, 12)"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            == 0
        ):
            found.append(candidate)
    return found[:1]


def test_run(
    python: Path, name: str, configurations: tuple[str, ...], pytest_args: list[str]
) -> int:
    """Run the suite once per database configuration; return the number that failed."""
    failed = 0
    for configuration in configurations:
        say(f"Tests ({name}, databases: {configuration})")
        env = {**os.environ, "DBFLEET_TEST_DATABASES": configuration}
        report = REPORTS / f"{name}-{configuration}.xml"
        code = run(
            python, "-m", "coverage", "run", "-m", "pytest", f"--junitxml={report}",
            *pytest_args, env=env, check=False,
        )  # fmt: skip
        failed += code != 0
    return failed


def totals() -> str:
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for report in REPORTS.glob("*.xml"):
        for suite in ET.parse(report).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    broken = counts["failures"] + counts["errors"]
    passed = counts["tests"] - broken - counts["skipped"]
    return f"{passed} passed, {broken} failed, {counts['skipped']} skipped"


def test(args: argparse.Namespace) -> None:
    python = ensure_venv(sys.executable, ROOT / ".venv", REQUIREMENTS / "django52.txt")
    bin_dir = python.parent
    say("Lint (ruff) and types (mypy --strict)")
    run(bin_dir / "ruff", "check", ".")
    run(bin_dir / "ruff", "format", "--check", ".")
    run(python, "-m", "mypy")

    shutil.rmtree(REPORTS, ignore_errors=True)
    REPORTS.mkdir()
    run(python, "-m", "coverage", "erase")
    failed = test_run(python, "django52", CONFIGURATIONS, args.pytest_args)
    for other in [] if args.quick else other_pythons():
        python6 = ensure_venv(other, ROOT / ".venv-django6", REQUIREMENTS / "django6.txt")
        # "mixed" puts all three engines in one project; "sqlite" needs no server.
        # The crash tests (two minutes of killed processes) ran once already.
        failed += test_run(
            python6,
            "django6",
            ("sqlite", "mixed"),
            ["--ignore=tests/test_crash.py", *args.pytest_args],
        )

    say("Coverage of src/dbfleet (branches)")
    run(python, "-m", "coverage", "combine", "--quiet", check=False)
    coverage_failed = run(python, "-m", "coverage", "report", "--fail-under=95", check=False)
    print(f"\ndbfleet: {totals()}")
    if failed or coverage_failed:
        sys.exit(1)


def demo(args: argparse.Namespace) -> None:
    python = ensure_venv(sys.executable, ROOT / ".venv", REQUIREMENTS / "django52.txt")
    run(python, ROOT / "examples" / "bookstore" / "demo.py", *args.demo_args)


def bench(args: argparse.Namespace) -> None:
    python = ensure_venv(sys.executable, ROOT / ".venv", REQUIREMENTS / "django52.txt")
    run(python, ROOT / "bench" / "run.py", *args.bench_args)


def main() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (this file may be run by an older python3)
        sys.exit("dbfleet needs Python 3.11 or newer; run this with python3.11 or later.")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tasks = parser.add_subparsers(dest="task", required=True)
    test_parser = tasks.add_parser("test", help="lint, type-check and run the tests")
    test_parser.add_argument("--quick", action="store_true", help="skip the Django 6 run")
    test_parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    test_parser.set_defaults(func=test)
    demo_parser = tasks.add_parser("demo", help="run the bookstore example")
    demo_parser.add_argument("demo_args", nargs="*")
    demo_parser.set_defaults(func=demo)
    bench_parser = tasks.add_parser("bench", help="run the benchmarks")
    bench_parser.add_argument("bench_args", nargs="*")
    bench_parser.set_defaults(func=bench)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
