"""migrate: `fleet migrate` on 8 PostgreSQL databases against the ways to run Django's migrate.

The benchmark writes a Django project into a temporary directory: 8 apps, each
with 60 migrations and routed to its own database by ``dbfleet.Router``, and
Django's contrib apps on ``default``. Every timed run starts from a shell, as a
person would: ``python -m django fleet migrate`` against three baselines:

- one Python process calling ``call_command("migrate", database=ALIAS)`` for
  each database in turn (one interpreter start, Django set up once);
- the shell recipe, ``python -m django migrate --database ALIAS &`` for every
  database, then ``wait`` (all at once);
- a loop of ``python -m django migrate --database ALIAS``, one after another.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Group
from rich.table import Table

from bench.postgres import connect, require_server, server_settings
from bench.timing import SECONDS, Case, Ratio, console, measure, report

ROOT = Path(__file__).resolve().parent.parent
#: Every server database the benchmark creates starts with this.
PREFIX = "dbfleet_bench_"
#: One database per app: app0 shares ``default`` with Django's contrib apps.
ALIASES = ("default", *(f"db{index}" for index in range(1, 8)))
APPS = tuple(f"app{index}" for index in range(len(ALIASES)))
MIGRATIONS_PER_APP = 60
#: --quick, a smoke test that `python3 dev.py test` runs: the first databases only, few
#: migrations. Every code path and every check still runs; the ratio means little.
QUICK_DATABASES = 3
QUICK_MIGRATIONS = 5
CONTRIB_APPS = ("contenttypes", "auth", "sessions", "admin")
CONTRIB_TABLES = frozenset(
    {
        "django_content_type",
        "auth_permission",
        "auth_group",
        "auth_group_permissions",
        "auth_user",
        "auth_user_groups",
        "auth_user_user_permissions",
        "django_session",
        "django_admin_log",
    }
)
#: dbfleet's own app: the two-phase decision log, on ``DEFAULT_DATABASE`` like the contrib apps.
DBFLEET_TABLES = frozenset({"dbfleet_decision"})
FLEET = "fleet migrate"
IN_PROCESS = "call_command loop, one process"
BACKGROUND = "migrate --database X &, then wait"
SEQUENTIAL = "migrate --database, one by one"
#: The in-process baseline: Django set up once, then Django's migrate on each database.
IN_PROCESS_SCRIPT = """\
import sys

import django
from django.core.management import call_command

django.setup()
for alias in sys.argv[1:]:
    call_command("migrate", database=alias, verbosity=0, interactive=False)
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Linux: the CPU accounting reads /proc (elsewhere the report leaves it out).
HAS_PROC = Path("/proc/stat").exists()
#: Both commands print nothing: output would cost the two differently.
VERBOSITY = "0"


# The generated project ------------------------------------------------------


@dataclass
class ModelState:
    """One generated model as its migrations leave it: fields (name -> source) and indexes."""

    name: str
    fields: dict[str, str]
    indexes: dict[str, list[str]] = field(default_factory=dict)

    def columns(self) -> set[str]:
        """The model's table columns."""
        return {"id"} | {
            f"{name}_id" if source.startswith("models.ForeignKey") else name
            for name, source in self.fields.items()
        }


@dataclass
class AppHistory:
    """One app's migration files (name -> source) and the models they end with."""

    label: str
    migrations: dict[str, str] = field(default_factory=dict)
    models: dict[str, ModelState] = field(default_factory=dict)

    def tables(self) -> set[str]:
        return {f"{self.label}_{model.lower()}" for model in self.models}

    def index_names(self) -> set[str]:
        return {name for model in self.models.values() for name in model.indexes}


def foreign_key(label: str, model: str) -> str:
    return f'models.ForeignKey(on_delete=models.CASCADE, to="{label}.{model.lower()}")'


def create_model(state: ModelState) -> str:
    fields = [
        '("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, '
        'verbose_name="ID"))',
        *(f'("{name}", {source})' for name, source in state.fields.items()),
    ]
    lines = "\n".join(f"        {line}," for line in fields)
    return f'migrations.CreateModel(\n    name="{state.name}",\n    fields=[\n{lines}\n    ],\n)'


def add_field(model: str, name: str, source: str) -> str:
    return (
        f"migrations.AddField(\n    model_name={model.lower()!r},\n    name={name!r},\n"
        f"    field={source},\n)"
    ).replace("'", '"')


def alter_field(model: str, name: str, source: str) -> str:
    return add_field(model, name, source).replace("AddField", "AlterField", 1)


def add_index(model: str, name: str, fields: list[str]) -> str:
    return (
        f"migrations.AddIndex(\n    model_name={model.lower()!r},\n"
        f"    index=models.Index(fields={fields!r}, name={name!r}),\n)"
    ).replace("'", '"')


def migration_source(label: str, previous: str | None, operations: list[str]) -> str:
    dependencies = f"[({label!r}, {previous!r})]".replace("'", '"') if previous else "[]"
    body = "".join(textwrap.indent(operation, " " * 8) + ",\n" for operation in operations)
    return (
        "from django.db import migrations, models\n\n\n"
        "class Migration(migrations.Migration):\n"
        + ("    initial = True\n\n" if not previous else "")
        + f"    dependencies = {dependencies}\n\n"
        f"    operations = [\n{body}    ]\n"
    )


def app_history(label: str, count: int = MIGRATIONS_PER_APP) -> AppHistory:
    """``count`` small schema changes, as a project collects them over a few years.

    Every app gets the same schedule, so every database has the same work:
    two models to start with, two more later, and in between fields added,
    widened and indexed, one or two operations per migration.
    """
    history = AppHistory(label)
    models = history.models
    models["Account"] = ModelState(
        "Account",
        {
            "name": "models.CharField(max_length=100)",
            "created": "models.DateTimeField(auto_now_add=True)",
        },
    )
    models["Entry"] = ModelState(
        "Entry",
        {
            "account": foreign_key(label, "Account"),
            "amount": "models.DecimalField(decimal_places=2, max_digits=12)",
            "booked": "models.DateField()",
        },
    )
    history.migrations["0001_initial"] = migration_source(
        label, None, [create_model(models["Account"]), create_model(models["Entry"])]
    )
    previous = "0001_initial"
    narrow: list[tuple[str, str]] = []  # CharFields that may be widened: (model, field)
    for number in range(2, count + 1):
        names = list(models)
        model = names[number % len(names)]
        operations: list[str] = []
        if number in (count // 3, 2 * count // 3):
            created = ModelState(
                "Invoice" if number == count // 3 else "Note",
                {
                    "account": foreign_key(label, "Account"),
                    "title": "models.CharField(max_length=200)",
                    "created": "models.DateTimeField(auto_now_add=True)",
                },
            )
            models[created.name] = created
            operations.append(create_model(created))
            slug = f"{created.name.lower()}"
        elif number % 5 == 2 and narrow:
            model, name = narrow.pop(0)
            source = 'models.CharField(blank=True, default="", max_length=120)'
            models[model].fields[name] = source
            operations.append(alter_field(model, name, source))
            slug = f"widen_{model.lower()}_{name}"
        elif number % 5 == 3:
            name = list(models[model].fields)[-1]
            index = f"{label}_{model[:3].lower()}_{number}_idx"
            models[model].indexes[index] = [name]
            operations.append(add_index(model, index, [name]))
            slug = f"{model.lower()}_{name}_index"
        else:
            kind = number % 4
            name, source = [
                (f"code_{number}", 'models.CharField(blank=True, default="", max_length=40)'),
                (f"count_{number}", "models.IntegerField(default=0)"),
                (f"due_{number}", "models.DateTimeField(blank=True, null=True)"),
                (f"active_{number}", "models.BooleanField(default=True)"),
            ][kind]
            models[model].fields[name] = source
            operations.append(add_field(model, name, source))
            if kind == 0:
                narrow.append((model, name))
            if number % 5 == 4:  # Now and then a second, related change.
                flag = f"flag_{number}"
                models[model].fields[flag] = "models.BooleanField(default=False)"
                operations.append(add_field(model, flag, models[model].fields[flag]))
            slug = f"{model.lower()}_{name}"
        current = f"{number:04d}_{slug}"
        history.migrations[current] = migration_source(label, previous, operations)
        previous = current
    return history


def models_source(history: AppHistory) -> str:
    """``models.py`` matching the last migration, so ``makemigrations`` finds nothing to do."""
    parts = ["from django.db import models\n"]
    for model in history.models.values():
        lines = [f"class {model.name}(models.Model):"]
        lines += [f"    {name} = {source}" for name, source in model.fields.items()]
        if model.indexes:
            lines += ["", "    class Meta:", "        indexes = ["]
            lines += [
                f"            models.Index(fields={fields!r}, name={name!r}),".replace("'", '"')
                for name, fields in model.indexes.items()
            ]
            lines += ["        ]"]
        parts.append("\n".join(lines) + "\n")
    return "\n\n".join(parts)


def settings_source(aliases: Sequence[str]) -> str:
    server = server_settings()
    databases = {
        alias: {"ENGINE": "django.db.backends.postgresql", "NAME": database_name(alias), **server}
        for alias in aliases
    }
    apps = APPS[: len(aliases)]
    routes = dict(zip(apps, aliases, strict=True))
    return textwrap.dedent(
        f'''\
        """Written by bench/migrate.py: {len(apps)} apps on {len(aliases)} databases."""

        DATABASES = {databases!r}
        DATABASE_ROUTERS = ["dbfleet.Router"]
        DBFLEET = {{"ROUTES": {routes!r}, "DEFAULT_DATABASE": "default"}}
        INSTALLED_APPS = [
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "dbfleet",
            *{list(apps)!r},
        ]
        MIDDLEWARE = [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ]
        TEMPLATES = [
            {{
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {{
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ],
                }},
            }},
        ]
        # The project makes no two-phase commits; on a server with the stock
        # max_prepared_transactions = 0 the warning would be output, which fails a run.
        SILENCED_SYSTEM_CHECKS = ["dbfleet.W004"]
        SECRET_KEY = "dbfleet-bench-migrate"
        USE_TZ = True
        DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
        '''
    )


def write_project(
    directory: Path, databases: int = len(ALIASES), migrations: int = MIGRATIONS_PER_APP
) -> list[AppHistory]:
    """Write the settings package and every app with its migrations into ``directory``.

    The project has the first ``databases`` aliases, each with its app.
    """
    site = directory / "benchsite"
    site.mkdir()
    (site / "__init__.py").write_text("")
    (site / "settings.py").write_text(settings_source(ALIASES[:databases]))
    histories = []
    for label in APPS[:databases]:
        history = app_history(label, migrations)
        package = directory / label
        (package / "migrations").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "models.py").write_text(models_source(history))
        (package / "migrations" / "__init__.py").write_text("")
        for name, source in history.migrations.items():
            (package / "migrations" / f"{name}.py").write_text(source)
        histories.append(history)
    return histories


# The databases ----------------------------------------------------------------


def database_name(alias: str) -> str:
    return f"{PREFIX}db{ALIASES.index(alias)}"


def drop_databases() -> None:
    """Every database the benchmark may have made, also those of a larger earlier run."""
    with connect() as connection:
        for alias in ALIASES:
            connection.execute(f"DROP DATABASE IF EXISTS {database_name(alias)} WITH (FORCE)")


def create_databases(aliases: Sequence[str]) -> None:
    """The databases of ``aliases``, new and empty."""
    drop_databases()
    with connect() as connection:
        for alias in aliases:
            connection.execute(f"CREATE DATABASE {database_name(alias)}")


@dataclass(frozen=True)
class Schema:
    """What one database holds after a migrate run."""

    recorded: frozenset[tuple[str, str]]
    columns: dict[str, set[str]]
    indexes: frozenset[str]


def read_schema(alias: str) -> Schema:
    columns: dict[str, set[str]] = {}
    with connect(database_name(alias)) as connection:
        recorded = connection.execute("SELECT app, name FROM django_migrations").fetchall()
        for table, column in connection.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        ):
            columns.setdefault(table, set()).add(column)
        indexes = connection.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchall()
    return Schema(frozenset(recorded), columns, frozenset(name for (name,) in indexes))


def check_migrated(histories: Sequence[AppHistory], after: str) -> None:
    """Fail unless every database is fully migrated, and each app's schema is on its own only.

    Django records every migration on every database it migrates, also those
    whose operations routing skips there: each database must record them all.
    Tables, columns and indexes must be exactly what the routes put there.
    """
    aliases = ALIASES[: len(histories)]
    schemas = {alias: read_schema(alias) for alias in aliases}
    everything = schemas["default"].recorded
    for alias, history in zip(aliases, histories, strict=True):
        schema = schemas[alias]
        problems = [
            f"{other.label} has {len(names)} of {len(other.migrations)} migrations recorded"
            for other in histories
            if (names := {name for app, name in schema.recorded if app == other.label})
            != set(other.migrations)
        ]
        problems += [
            f"no {app} migrations recorded"
            for app in (*CONTRIB_APPS, "dbfleet")
            if not any(label == app for label, _ in schema.recorded)
        ]
        if schema.recorded != everything:
            problems.append("its migration records differ from those on 'default'")
        expected = {"django_migrations"} | history.tables()
        if alias == "default":
            expected |= CONTRIB_TABLES | DBFLEET_TABLES
        tables = set(schema.columns)
        if tables != expected:
            problems.append(
                f"tables missing: {sorted(expected - tables)}, "
                f"not expected: {sorted(tables - expected)}"
            )
        for model in history.models.values():
            table = f"{history.label}_{model.name.lower()}"
            if table in tables and schema.columns[table] != model.columns():
                problems.append(f"{table} has the columns {sorted(schema.columns[table])}")
        if missing := history.index_names() - schema.indexes:
            problems.append(f"missing indexes {sorted(missing)}")
        if problems:
            raise RuntimeError(f"After {after}, {alias} is not as expected: {problems}")


# The commands -------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    directory: Path
    histories: list[AppHistory]

    @property
    def aliases(self) -> tuple[str, ...]:
        """The project's databases: one for each app."""
        return ALIASES[: len(self.histories)]

    def environment(self) -> dict[str, str]:
        # src/ first: time the working tree's dbfleet, as bench/run.py does.
        path = os.pathsep.join([str(self.directory), str(ROOT / "src")])
        return {**os.environ, "DJANGO_SETTINGS_MODULE": "benchsite.settings", "PYTHONPATH": path}

    def django(self, name: str, *arguments: str) -> None:
        """``python -m django NAME ARGUMENTS`` in a new interpreter; raise if it fails."""
        self.wait(self.start(self.django_command(name, *arguments)))

    @staticmethod
    def django_command(name: str, *arguments: str) -> list[str]:
        # --verbosity goes before any subcommand: `fleet migrate` has its own parser.
        return [sys.executable, "-m", "django", name, "--verbosity", VERBOSITY, *arguments]

    def start(self, command: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            env=self.environment(),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    @staticmethod
    def wait(process: subprocess.Popen[bytes]) -> None:
        """Wait for ``process``; raise if it failed or printed anything."""
        output, _ = process.communicate(timeout=600)
        if process.returncode or output.strip():
            command = " ".join(str(part) for part in list(process.args)[1:])  # type: ignore[arg-type]
            raise RuntimeError(
                f"{command} exited {process.returncode}:\n{output.decode(errors='replace')}"
            )

    def fleet_migrate(self) -> None:
        self.django("fleet", "migrate", "--noinput")

    def migrate_each(self) -> None:
        """What a shell loop does: ``for alias in ...; do python -m django migrate ...; done``."""
        for alias in self.aliases:
            self.django("migrate", "--database", alias, "--noinput")

    def migrate_in_background(self) -> None:
        """``for alias in ...; do python -m django migrate --database $alias & done; wait``."""
        started = [
            self.start(self.django_command("migrate", "--database", alias, "--noinput"))
            for alias in self.aliases
        ]
        for process in started:
            self.wait(process)

    def migrate_in_process(self) -> None:
        """One interpreter: ``call_command("migrate", database=alias)`` for each in turn."""
        self.wait(self.start([sys.executable, "-c", IN_PROCESS_SCRIPT, *self.aliases]))


# CPU accounting -------------------------------------------------------------------
#
# The machine is shared. A command that runs on one core hardly notices another
# job on the second core; a command that needs both loses half its speed. So
# the report says, for each case, how the CPU time of the machine was spent:
# the commands (with their workers), PostgreSQL (when the server runs on this
# machine), every other process, and idle.


@dataclass(frozen=True)
class CpuSnapshot:
    """Seconds of CPU used so far: by the machine, this process's children, PostgreSQL."""

    busy: float
    total: float
    children: float
    postgres: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:9]]
        idle = ticks[3] + ticks[4]  # idle, iowait
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            (sum(ticks) - idle) / CLOCK_TICKS,
            sum(ticks) / CLOCK_TICKS,
            usage.ru_utime + usage.ru_stime,
            postgres_seconds(),
        )


def postgres_seconds() -> float:
    """CPU seconds of every live PostgreSQL process (the server is on this machine)."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                line = stat.read()
        except OSError:
            continue  # It ended in between.
        name, _, rest = line.partition("(")[2].rpartition(")")
        if name.startswith("postgres"):
            fields = rest.split()
            # utime, stime, and cutime, cstime: the ended backends, reaped by the postmaster.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


@dataclass(frozen=True)
class CpuUse:
    """Where the machine's CPU time went during one timed run, in seconds."""

    commands: float
    postgres: float
    others: float
    idle: float

    @classmethod
    def between(cls, before: CpuSnapshot, after: CpuSnapshot) -> CpuUse:
        commands = after.children - before.children
        postgres = after.postgres - before.postgres
        return cls(
            commands,
            postgres,
            max(after.busy - before.busy - commands - postgres, 0.0),
            (after.total - after.busy) - (before.total - before.busy),
        )


def cpu_tables(runs: Runs) -> list[Table]:
    """Where the CPU time went during the runs, if it could be measured here."""
    return [cpu_table(runs.cpu)] if runs.cpu else []


def cpu_table(uses: dict[str, list[CpuUse]]) -> Table:
    table = Table(title="Where the CPU time went (medians, s)", title_justify="left")
    for column in ("case", "the commands", "PostgreSQL", "other processes", "idle"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for name, found in uses.items():
        table.add_row(
            name,
            *(
                f"{statistics.median(getattr(use, part) for use in found):.1f}"
                for part in ("commands", "postgres", "others", "idle")
            ),
        )
    return table


# Timing ---------------------------------------------------------------------------


@dataclass
class Runs:
    """The two timed commands; each run is checked and its CPU use recorded, untimed."""

    project: Project
    #: Whether each run starts from new, empty databases.
    fresh: bool
    cpu: dict[str, list[CpuUse]] = field(default_factory=dict)
    running: tuple[str, CpuSnapshot | None] | None = None

    def cases(self) -> list[Case]:
        def case(name: str, command: Callable[[], None]) -> Case:
            def run(n: int) -> None:
                for _ in range(n):
                    command()

            return Case(name, run, lambda: self.prepare(name))

        return [
            case(FLEET, self.project.fleet_migrate),
            case(IN_PROCESS, self.project.migrate_in_process),
            case(BACKGROUND, self.project.migrate_in_background),
            case(SEQUENTIAL, self.project.migrate_each),
        ]

    def prepare(self, name: str) -> None:
        """Close the last run (CPU use, check), set up the databases, start this run."""
        self.finish()
        if self.fresh:
            create_databases(self.project.aliases)
        self.running = name, CpuSnapshot.take() if HAS_PROC else None

    def finish(self) -> None:
        if self.running:
            name, before = self.running
            if before:
                self.cpu.setdefault(name, []).append(CpuUse.between(before, CpuSnapshot.take()))
            self.running = None
            check_migrated(self.project.histories, f"a run of {name!r}")


def prepare_project(directory: Path, databases: int, migrations: int) -> Project:
    """Write the project, compile it, and make sure its models match its migrations."""
    project = Project(directory, write_project(directory, databases, migrations))
    # Untimed: otherwise the first timed run would also compile the migration files.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(directory)], check=True)
    # makemigrations checks the history of every database it can reach.
    create_databases(project.aliases)
    project.django("makemigrations", "--check", "--dry-run", "--noinput")
    return project


def bench(project: Project, *, fresh: bool, rounds: int) -> tuple[dict[str, list[float]], Runs]:
    """Time both commands, interleaved; every run is checked before the next one starts."""
    runs = Runs(project, fresh)
    samples = measure(runs.cases(), rounds=rounds, batch=1, warmup=0)
    runs.finish()
    return samples, runs


def run(quick: bool) -> bool:
    """Time a full migrate from empty databases, then a run with nothing to apply."""
    console.rule("migrate")
    require_server()
    started = time.monotonic()
    # --quick: a smaller project, one round of each; enough to see that it works.
    databases = QUICK_DATABASES if quick else len(ALIASES)
    migrations = QUICK_MIGRATIONS if quick else MIGRATIONS_PER_APP
    with tempfile.TemporaryDirectory(prefix=PREFIX) as directory:
        project = prepare_project(Path(directory), databases, migrations)
        try:
            full, full_runs = bench(project, fresh=True, rounds=1 if quick else 2)
            noop, noop_runs = bench(project, fresh=False, rounds=1 if quick else 2)
        finally:
            drop_databases()
    total = databases * migrations
    full_met = report(
        f"Full migrate: {databases} new PostgreSQL databases, {databases} apps of "
        f"{migrations} migrations (every database records all {total}, and the contrib apps')",
        full,
        unit=SECONDS,
        # With a few migrations an app, starting interpreters is most of the work and
        # the ratio says little about a real project: the target is for the full run.
        ratios=[
            Ratio(FLEET, IN_PROCESS, at_most=None if quick else 0.5),
            Ratio(FLEET, BACKGROUND, at_most=None if quick else 0.6),
            Ratio(FLEET, SEQUENTIAL),
        ],
        note=Group(
            *cpu_tables(full_runs),
            *(["--quick: a smaller project; the targets are for the full run only."] * quick),
        ),
    )
    noop_met = report(
        f"Nothing to apply: the same commands again on the {databases} migrated databases",
        noop,
        unit=SECONDS,
        ratios=[
            Ratio(FLEET, SEQUENTIAL, at_most=None if quick else 0.25),
            Ratio(FLEET, IN_PROCESS),
            Ratio(FLEET, BACKGROUND),
        ],
        note=Group(
            *cpu_tables(noop_runs),
            f"{FLEET!r} ran up to {os.cpu_count()} workers at once (its --jobs default, the "
            "CPU count). Every run was checked: migration records, tables, columns, indexes. "
            f"({time.monotonic() - started:.0f} s in all)",
        ),
    )
    return full_met and noop_met
