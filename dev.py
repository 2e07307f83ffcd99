"""Set up and run dbfleet's development tasks with nothing but Python 3.11+.

    python3 dev.py demo    # the bookstore example, on SQLite files
    python3 dev.py test    # lint, types, the suite on every engine, benchmarks (smoke), coverage
    python3 dev.py lint    # ruff check, ruff format --check, mypy --strict, layers
    python3 dev.py bench   # the benchmarks, printing ratios

Each task creates (or refreshes) a virtual environment from the locked
requirements in requirements/ before it runs, so a fresh clone needs no setup.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = ROOT / "requirements"
MYSQL_LOCK = REQUIREMENTS / "mysql.txt"
REPORTS = ROOT / ".reports"
CONFIGURATIONS = ("sqlite", "postgres", "mysql", "mixed", "replication", "analytics")
#: The configurations with a MariaDB database (tests/settings.py's ENGINES).
MYSQL_CONFIGURATIONS = frozenset({"mysql", "mixed"})
MYSQL_INSTALL = "apt-get install libmariadb-dev pkg-config gcc (Debian/Ubuntu)"
#: What mysqlclient's build looks for with pkg-config, in its order.
MYSQL_PKG_CONFIG_NAMES = ("mysqlclient", "mariadb", "libmariadb", "perconaserverclient")
#: One configuration's run of the suite may take this long; then it is stopped (and
#: fails), so that a hang the per-test timeout cannot break never stalls the whole run.
CONFIGURATION_DEADLINE = 20 * 60


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m" if sys.stdout.isatty() else f"==> {message}", flush=True)


def run(
    *command: str | Path,
    env: dict[str, str] | None = None,
    check: bool = True,
    deadline: float | None = None,
) -> int:
    """Run ``command`` in the repository; exit with its status if it fails and ``check``.

    With ``deadline`` (seconds) a command still running then is interrupted (SIGINT:
    pytest prints where it was), then aborted (SIGABRT: Python's faulthandler, which
    pytest turns on, dumps every thread's stack even inside a blocking C call), then killed.
    """
    process = subprocess.Popen([str(part) for part in command], cwd=ROOT, env=env)
    try:
        code = process.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        say(f"Still running after {deadline:.0f} s: stopping {Path(str(command[0])).name}")
        code = stop(process)
    except BaseException:
        # Ctrl-C reached the child too: let it finish its report, but don't leave it behind.
        try:
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        raise
    if check and code:
        sys.exit(code)
    return code


def stop(process: subprocess.Popen[bytes]) -> int:
    """Interrupt, abort, then kill ``process``; return its exit status (non-zero)."""
    for sent, grace in ((signal.SIGINT, 30), (signal.SIGABRT, 10), (signal.SIGKILL, None)):
        process.send_signal(sent)
        try:
            return process.wait(timeout=grace) or 1
        except subprocess.TimeoutExpired:
            continue
    return process.wait() or 1


# The virtual environments --------------------------------------------------------


@dataclass(frozen=True)
class Venv:
    python: Path
    #: Whether mysqlclient (the MariaDB driver) is installed.
    mysqlclient: bool


def digest(*parts: bytes | str) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part.encode() if isinstance(part, str) else part)
        hashed.update(b"\0")
    return hashed.hexdigest()


def ensure_venv(python: str, path: Path, lock: Path, *, mysql: bool) -> Venv:
    """Create or refresh a virtual environment from ``lock``; with ``mysql``, add mysqlclient.

    The stamp in the venv records what was installed: the lock it was made from
    and, apart, whether mysqlclient is in it. mysqlclient is compiled against the
    MariaDB client headers, so it is tried only when a task needs it and the build
    can find them, and tried again only when what it finds has changed since it failed.
    """
    bin_python = path / "bin" / "python"
    stamp_path = path / ".dbfleet-stamp.json"
    # The interpreter too: a venv is bound to the Python that made it.
    identity = sys.version if Path(python).resolve() == Path(sys.executable).resolve() else python
    wanted = digest(lock.read_bytes(), str(Path(python).resolve()), identity)
    stamp = read_stamp(stamp_path)
    if not (bin_python.exists() and stamp.get("lock") == wanted):
        say(f"Installing {lock.relative_to(ROOT)} into {path.relative_to(ROOT)}")
        if Path(python).resolve() == Path(sys.executable).resolve():
            venv.create(path, with_pip=True, clear=True)
        else:
            run(python, "-m", "venv", "--clear", path)
        pip = (bin_python, "-m", "pip", "--disable-pip-version-check", "--quiet")
        run(*pip, "install", "--upgrade", "pip")
        run(*pip, "install", "--requirement", lock)
        run(*pip, "install", "--no-deps", "--editable", ROOT)
        stamp = {"lock": wanted}
        write_stamp(stamp_path, stamp)
    installed = mysqlclient_installed(path, stamp)
    if mysql and not installed:
        installed = install_mysqlclient(bin_python, stamp)
        write_stamp(stamp_path, stamp)
    return Venv(bin_python, installed)


def read_stamp(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_stamp(path: Path, stamp: dict[str, Any]) -> None:
    path.write_text(json.dumps(stamp, indent=2) + "\n")


def mysqlclient_installed(path: Path, stamp: dict[str, Any]) -> bool:
    """Whether the venv has mysqlclient from the current requirements/mysql.txt."""
    if stamp.get("mysqlclient") != digest(MYSQL_LOCK.read_bytes()):
        return False
    # Trust the stamp only while the package is there (pip uninstall leaves the stamp).
    return any(path.glob("lib/python3*/site-packages/MySQLdb/__init__.py"))


def install_mysqlclient(python: Path, stamp: dict[str, Any]) -> bool:
    """Build and install mysqlclient if it can be built here; record the outcome in ``stamp``."""
    missing, found = mysqlclient_build_needs()
    if missing:
        say(
            f"mysqlclient (the MariaDB driver) is not installed: it needs {missing}: "
            f"{MYSQL_INSTALL}. Without it the MariaDB tests are skipped."
        )
        return False
    if stamp.get("mysqlclient_failed_with") == found:
        say(
            f"mysqlclient did not build last time, with {found}, and nothing it needs has "
            f"changed since, so the MariaDB tests are skipped. To see why: {python} -m pip "
            f"install -r {MYSQL_LOCK.relative_to(ROOT)}"
        )
        return False
    say(f"Installing {MYSQL_LOCK.relative_to(ROOT)} (builds against {found})")
    pip = (python, "-m", "pip", "--disable-pip-version-check", "--quiet")
    built = run(*pip, "install", "--requirement", MYSQL_LOCK, check=False) == 0
    if built and run(python, "-c", "import MySQLdb", check=False) == 0:
        stamp["mysqlclient"] = digest(MYSQL_LOCK.read_bytes())
        stamp.pop("mysqlclient_failed_with", None)
        return True
    stamp["mysqlclient_failed_with"] = found
    say(
        f"mysqlclient could not be built or imported (with {found}), so the MariaDB tests "
        f"are skipped; the error is above. It needs the MariaDB client headers, a C compiler "
        f"and Python's headers: {MYSQL_INSTALL}. Fixed, the next run tries again."
    )
    return False


def mysqlclient_build_needs() -> tuple[str | None, str]:
    """(what mysqlclient's build lacks here, or None; what it would build with).

    mysqlclient (2.2+) takes MYSQLCLIENT_CFLAGS and MYSQLCLIENT_LDFLAGS, or asks
    pkg-config for the client library; then it compiles C.
    """
    cflags = os.environ.get("MYSQLCLIENT_CFLAGS")
    ldflags = os.environ.get("MYSQLCLIENT_LDFLAGS")
    library = f"MYSQLCLIENT_CFLAGS={cflags} MYSQLCLIENT_LDFLAGS={ldflags}"
    if not (cflags and ldflags):
        pkg_config = shutil.which("pkg-config")
        if pkg_config is None:
            return "pkg-config and the MariaDB client headers", ""
        for name in MYSQL_PKG_CONFIG_NAMES:
            version = subprocess.run(
                [pkg_config, "--modversion", name], capture_output=True, text=True, check=False
            )
            if version.returncode == 0:
                library = f"{name} {version.stdout.strip()}"
                break
        else:
            return "the MariaDB client headers (pkg-config finds no libmariadb)", ""
    compiler = (os.environ.get("CC") or "cc").split()[0]
    compiler_path = shutil.which(compiler)
    if compiler_path is None:
        return f"a C compiler ({compiler})", library
    return None, f"{library}, {compiler_path}"


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


def dev_venv(*, mysql: bool) -> Venv:
    """``.venv``, on this Python and Django 5.2: every task runs in it."""
    return ensure_venv(sys.executable, ROOT / ".venv", REQUIREMENTS / "django52.txt", mysql=mysql)


def servers_required() -> bool:
    """As tests/conftest.py decides: in CI a missing server or driver fails the run."""
    return bool(os.environ.get("CI")) or os.environ.get("DBFLEET_TEST_SERVERS") == "require"


@dataclass(frozen=True)
class Suite:
    """One run of the suite: a Django version's venv on one database configuration."""

    installed: Venv
    django: str
    configuration: str
    pytest_args: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.django}-{self.configuration}"

    @property
    def title(self) -> str:
        return f"Tests ({self.django}, databases: {self.configuration})"


def suites(
    installed: Venv, django: str, configurations: tuple[str, ...], pytest_args: list[str]
) -> list[Suite]:
    return [
        Suite(installed, django, configuration, tuple(pytest_args))
        for configuration in configurations
    ]


def test_jobs() -> int:
    """How many suites run at once: ``DBFLEET_TEST_JOBS``, else one per core, at most 2."""
    jobs = os.environ.get("DBFLEET_TEST_JOBS", "")
    if jobs:
        if not jobs.isdigit() or int(jobs) < 1:
            sys.exit(f"DBFLEET_TEST_JOBS must be a whole number >= 1, not {jobs!r}")
        return int(jobs)
    return max(1, min(2, os.cpu_count() or 1))


def run_suites(planned: list[Suite], jobs: int) -> list[str]:
    """Run the suites, ``jobs`` at a time; return the names of those that failed.

    Each writes to ``.reports/NAME.log``, printed whole once it ends, and has its
    own database names (``DBFLEET_TEST_PREFIX`` + its name), so that suites
    running together never share a database.
    """
    failed: list[str] = []
    waiting: list[Suite] = []
    for suite in planned:
        if suite.configuration in MYSQL_CONFIGURATIONS and not suite.installed.mysqlclient:
            # Django would stop at start-up with a traceback (no MySQLdb): say it in one line.
            why = f"mysqlclient (the MariaDB driver) is not installed; {MYSQL_INSTALL}"
            if servers_required():
                say(f"{suite.title}: FAILED: {why}, then run this again")
                failed.append(suite.name)
            else:
                say(f"{suite.title}: skipped: {why}; DBFLEET_TEST_SERVERS=require fails instead")
        else:
            waiting.append(suite)
    say(f"Running {len(waiting)} suites, {jobs} at a time: {', '.join(s.name for s in waiting)}")
    prefix = os.environ.get("DBFLEET_TEST_PREFIX", "dbfleet")
    running: dict[Suite, tuple[subprocess.Popen[bytes], float, Any]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                suite = waiting.pop(0)
                env = {
                    **os.environ,
                    "DBFLEET_TEST_DATABASES": suite.configuration,
                    "DBFLEET_TEST_PREFIX": f"{prefix}_{suite.name.replace('-', '_')}",
                }
                log = (REPORTS / f"{suite.name}.log").open("wb")
                command = [
                    suite.installed.python, "-m", "coverage", "run", "-m", "pytest",
                    f"--junitxml={REPORTS / f'{suite.name}.xml'}", *suite.pytest_args,
                ]  # fmt: skip
                process = subprocess.Popen(
                    [str(part) for part in command],
                    cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                running[suite] = (process, time.monotonic(), log)
            time.sleep(0.2)
            for suite, (process, started, log) in list(running.items()):
                code = process.poll()
                seconds = time.monotonic() - started
                if code is None and seconds > CONFIGURATION_DEADLINE:
                    say(f"{suite.title}: still running after {seconds:.0f} s: stopping it")
                    code = stop(process)
                if code is None:
                    continue
                del running[suite]
                log.close()
                say(f"{suite.title}: {'passed' if code in (0, 5) else 'FAILED'} in {seconds:.0f} s")
                sys.stdout.write((REPORTS / f"{suite.name}.log").read_text(errors="replace"))
                sys.stdout.flush()
                # 5: every test was deselected (say, -k matched nothing in this configuration).
                if code not in (0, 5):
                    failed.append(suite.name)
    finally:
        for process, _, log in running.values():  # Ctrl-C, or an error here: leave none behind.
            stop(process)
            log.close()
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


def lint_checks(python: Path) -> list[str]:
    """Run ruff (lint and format) and mypy; return the names of those that failed."""
    bin_dir = python.parent
    checks = {
        "ruff check": (bin_dir / "ruff", "check", "."),
        "ruff format --check": (bin_dir / "ruff", "format", "--check", "."),
        "mypy": (python, "-m", "mypy"),
        # No import cycle, each layer of DESIGN.md importing only those below.
        "layers": (python, "-m", "pytest", "-q", "-p", "no:randomly", "tests/test_layers.py"),
    }
    say("Lint (ruff check, ruff format --check), types (mypy --strict), layers")
    return [name for name, command in checks.items() if run(*command, check=False)]


def lint(args: argparse.Namespace) -> None:
    installed = dev_venv(mysql=False)
    failed = lint_checks(installed.python)
    if failed:
        sys.exit(f"Failed: {', '.join(failed)}")
    say("Lint and types: clean")


def test(args: argparse.Namespace) -> None:
    started = time.monotonic()
    installed = dev_venv(mysql=True)
    lint_failed = lint_checks(installed.python)
    if lint_failed:
        sys.exit(f"Failed: {', '.join(lint_failed)} (fix them first: python3 dev.py lint)")

    shutil.rmtree(REPORTS, ignore_errors=True)
    REPORTS.mkdir()
    run(installed.python, "-m", "coverage", "erase")
    planned = suites(installed, "django52", CONFIGURATIONS, args.pytest_args)
    for other in [] if args.quick else other_pythons():
        installed6 = ensure_venv(
            other, ROOT / ".venv-django6", REQUIREMENTS / "django6.txt", mysql=True
        )
        # "mixed" puts all three engines in one project, "analytics" adds ClickHouse
        # (django-clickhouse-backend has code of its own for Django 6). The crash tests
        # (a minute of killed processes) ran once already.
        planned += suites(
            installed6,
            "django6",
            ("mixed", "analytics"),
            ["--ignore=tests/test_crash.py", *args.pytest_args],
        )
    # The longest first, so that the last to start is a short one.
    order = ("mixed", "postgres", "mysql", "sqlite", "analytics", "replication")
    planned.sort(key=lambda suite: order.index(suite.configuration))
    failed = run_suites(planned, test_jobs())

    if not args.pytest_args:  # Not when only some tests were asked for.
        # Every benchmark in its quick mode, its targets not judged: a smoke test, so that
        # none stops working unnoticed. Not under coverage: that is the tests' coverage.
        say("Benchmarks, --quick (a smoke test: targets are not judged)")
        require = ["--require"] if servers_required() else []
        smoke: list[str | Path] = [installed.python, ROOT / "bench" / "run.py", "--quick", *require]
        if run(*smoke, check=False, deadline=CONFIGURATION_DEADLINE):
            failed.append("benchmarks")

    say("Coverage of src/dbfleet (branches)")
    run(installed.python, "-m", "coverage", "combine", "--quiet", check=False)
    coverage = run(installed.python, "-m", "coverage", "report", "--fail-under=95", check=False)
    if coverage:
        failed.append("coverage (under 95%)")
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"\n{minutes} min {seconds} s in all")
    if failed:
        print(f"Failed: {', '.join(failed)}")
    print(f"\ndbfleet: {totals()}")  # Last: CI reads the closing line.
    if failed:
        sys.exit(1)


def demo(args: argparse.Namespace) -> None:
    # SQLite needs no driver; mysqlclient (a C build) only when a database is on MariaDB.
    mysql = any(
        value.startswith("mysql")
        for key, value in os.environ.items()
        if key.startswith("BOOKSTORE_") and key.endswith("_URL")
    )
    installed = dev_venv(mysql=mysql)
    run(installed.python, ROOT / "examples" / "bookstore" / "demo.py", *args.demo_args)


def bench(args: argparse.Namespace) -> None:
    # The benchmarks use SQLite and PostgreSQL only.
    installed = dev_venv(mysql=False)
    run(installed.python, ROOT / "bench" / "run.py", *args.bench_args)


def main() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (this file may be run by an older python3)
        sys.exit("dbfleet needs Python 3.11 or newer; run this with python3.11 or later.")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tasks = parser.add_subparsers(dest="task", required=True)
    test_parser = tasks.add_parser("test", help="lint, type-check and run the tests")
    test_parser.add_argument("--quick", action="store_true", help="skip the Django 6 run")
    test_parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    test_parser.set_defaults(func=test)
    lint_parser = tasks.add_parser("lint", help="ruff check, ruff format --check and mypy")
    lint_parser.set_defaults(func=lint)
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
