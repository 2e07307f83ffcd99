"""Every system check id dbfleet emits, each for exactly one problem.

Append-only: an id keeps the meaning it was first given and is never reused.
A new problem gets a new member with the next free number, even when it looks
like an old one, so that ``SILENCED_SYSTEM_CHECKS`` never silences more than a
user chose. The README's table of checks lists exactly these, in these words.
"""

from __future__ import annotations

from enum import StrEnum, unique


@unique
class CheckId(StrEnum):
    """A check id (its value, such as ``"dbfleet.E001"``) and the one problem it reports."""

    problem: str

    def __new__(cls, value: str, problem: str) -> CheckId:
        member = str.__new__(cls, value)
        member._value_ = value
        member.problem = problem
        return member

    DBFLEET_NOT_A_DICT = "dbfleet.E001", "`DBFLEET` is not a dict"
    UNKNOWN_KEY = "dbfleet.E002", "unknown key in `DBFLEET`"
    MALFORMED_ROUTES = (
        "dbfleet.E003",
        '`ROUTES` is not a dict of `"app"`/`"app.Model"` -> alias',
    )
    ROUTE_TO_UNKNOWN_DATABASE = "dbfleet.E004", "a route names a database not in `DATABASES`"
    ROUTE_TO_UNKNOWN_APP = "dbfleet.E005", "a route names an app that is not installed"
    ROUTE_TO_UNKNOWN_MODEL = "dbfleet.E006", "a route names a model its app does not have"
    UNKNOWN_DEFAULT_DATABASE = "dbfleet.E007", "`DEFAULT_DATABASE` is not in `DATABASES`"
    MALFORMED_REPLICAS = (
        "dbfleet.E008",
        "`REPLICAS` is not a dict of primary -> list of replicas (an alias or a dict with `alias`)",
    )
    REPLICAS_UNKNOWN_DATABASE = "dbfleet.E009", "`REPLICAS` names a database not in `DATABASES`"
    REPLICA_UNDER_TWO_PRIMARIES = "dbfleet.E010", "a replica is listed under two primaries"
    ROUTE_TO_REPLICA = "dbfleet.E011", "a route names a replica"
    ROUTER_NOT_INSTALLED = (
        "dbfleet.E012",
        "`DBFLEET` is set but `dbfleet.Router` is not in `DATABASE_ROUTERS`",
    )
    EARLIER_ROUTER_OVERRIDES = (
        "dbfleet.E013",
        "a router before `dbfleet.Router` sends a routed model elsewhere",
    )
    RELATION_ACROSS_GROUPS = (
        "dbfleet.E014",
        "a ForeignKey / OneToOne / ManyToMany spans two groups",
    )
    AUTH_APART_FROM_CONTENTTYPES = (
        "dbfleet.E015",
        "`auth` and `contenttypes` are on different databases",
    )
    ROUTE_TO_DEPENDENT_MODEL = (
        "dbfleet.E016",
        "a route names a proxy or auto-created model (it lives with the model whose table it uses)",
    )
    DB_HINT = (
        "dbfleet.E017",
        'a migration operation has `hints={"db": ...}`, which crashes `migrate`',
    )
    HINT_TO_UNKNOWN_DATABASE = (
        "dbfleet.E018",
        "a `target_db` hint names a database not in `DATABASES` (or no alias at all)",
    )
    UNKNOWN_WRITE_GUARD = "dbfleet.E019", '`WRITE_GUARD` is not `"warn"`, `"raise"` or `"off"`'
    BAD_RECOVERY_GRACE = "dbfleet.E020", "`RECOVERY_GRACE` is not a number of seconds >= 0"
    UNKNOWN_READ_YOUR_WRITES = (
        "dbfleet.E021",
        '`READ_YOUR_WRITES` is not `"time"` or `"position"`',
    )
    BAD_MAX_LAG = "dbfleet.E022", "`MAX_LAG` is not a number of seconds >= 0"
    BAD_COOKIE_NAME = "dbfleet.E023", "`READ_YOUR_WRITES_COOKIE` is not a cookie name"
    DEFAULT_DATABASE_IS_A_REPLICA = "dbfleet.E024", "`DEFAULT_DATABASE` is a replica"
    CHAINED_REPLICA = "dbfleet.E025", "a replica has replicas of its own (a chain)"
    BAD_REPLICA_WEIGHT = "dbfleet.E026", "a replica's `weight` is not a whole number >= 1"
    UNKNOWN_REPLICA_KEY = (
        "dbfleet.E027",
        "a replica entry has a key other than `alias` and `weight`",
    )
    BAD_REPLICA_COOLDOWN = (
        "dbfleet.E028",
        "`REPLICA_COOLDOWN` is not a number of seconds >= 0",
    )
    BAD_REPLICA_CHECK_INTERVAL = (
        "dbfleet.E029",
        "`REPLICA_CHECK_INTERVAL` is not a number of seconds >= 0",
    )
    BAD_READ_YOUR_WRITES_WINDOW = (
        "dbfleet.E030",
        "`READ_YOUR_WRITES_WINDOW` is not a number of seconds >= 0",
    )
    HINT_TO_REPLICA = "dbfleet.E031", "a `target_db` hint names a replica"
    HINT_TO_UNKNOWN_MODEL = "dbfleet.E032", "a `model` hint names no installed model"
    BAD_PROBE_TIMEOUT = "dbfleet.E033", "`PROBE_TIMEOUT` is not a number of seconds >= 0"
    UNHINTED_OPERATION_IN_SPLIT_APP = (
        "dbfleet.E034",
        "a `RunPython`/`RunSQL` without hints in an app split across databases: it would run on "
        "`DEFAULT_DATABASE` only and be recorded as applied on the others (`fleet migrate` "
        "refuses it)",
    )
    MALFORMED_SHARDS = (
        "dbfleet.E035",
        "`SHARDS` is not a dict of group name -> dict with `databases`, `keys`, `reference`, "
        "`slots`, `two_phase`",
    )
    SHARD_UNKNOWN_DATABASE = (
        "dbfleet.E036",
        "a shard group names a database not in `DATABASES`, or a replica",
    )
    BAD_SHARD_SLOTS = (
        "dbfleet.E037",
        "a shard group's `slots` is not a whole number from its number of databases to 1024",
    )
    SHARD_DATABASE_SHARED = (
        "dbfleet.E038",
        "a database is in two shard groups, or is also a `ROUTES` target",
    )
    MODEL_PLACED_TWICE = (
        "dbfleet.E039",
        "a model is in two shard groups, sharded and reference at once, or in `ROUTES` too",
    )
    SHARD_UNKNOWN_MODEL_OR_KEY = (
        "dbfleet.E040",
        "a shard group names a model that is not installed, or a key field the model does not have",
    )
    SHARDED_WITHOUT_MANAGER = (
        "dbfleet.E041",
        "a sharded or reference model's default manager is not a `dbfleet.ShardedManager`",
    )
    SHARD_ENGINES_DIFFER = (
        "dbfleet.E042",
        "the databases of one shard group are on different engines",
    )
    SHARDED_AUTO_PRIMARY_KEY = (
        "dbfleet.E043",
        "a sharded model has an auto-increment primary key (each shard counts on its own)",
    )
    SHARD_RELATION = (
        "dbfleet.E044",
        "a foreign key from a sharded or reference model to a model of another group (with a "
        "constraint), or from a reference model to a sharded one",
    )
    CLICKHOUSE_IN_REPLICAS = (
        "dbfleet.E045",
        "a ClickHouse database is in `REPLICAS`, as a replica or as a primary (it has no "
        "transactions for a replica to follow)",
    )
    CLICKHOUSE_IN_SHARD_GROUP = (
        "dbfleet.E046",
        "a ClickHouse database is in a shard group (its writes cannot be made atomic)",
    )
    CLICKHOUSE_DEFAULT_DATABASE = (
        "dbfleet.E047",
        "`DEFAULT_DATABASE` is a ClickHouse database (unrouted models and the two-phase "
        "decision log need transactions)",
    )
    CHDB_WITHOUT_PATH = (
        "dbfleet.E048",
        'a chDB database has no `OPTIONS["path"]`, its data directory',
    )
    CHDB_PATHS_DIFFER = (
        "dbfleet.E049",
        'chDB databases have different `OPTIONS["path"]` (chDB opens one data directory per '
        "process)",
    )
    SYNCED_SOURCE_NOT_FOUND = (
        "dbfleet.E050",
        "a synced model's `class Sync` names no `source`, or a source that is not an installed "
        "model",
    )
    SYNCED_FIELD_UNMAPPED = (
        "dbfleet.E051",
        "a synced model copies a field of its source that has no ClickHouse type dbfleet maps "
        "it to",
    )
    SYNCED_FIELD_UNKNOWN = (
        "dbfleet.E052",
        "a synced model's `Sync.fields` names a field its source does not have",
    )
    SYNCED_COPY_NOT_ON_CLICKHOUSE = (
        "dbfleet.E053",
        "a synced model is routed to a database that is not ClickHouse",
    )
    SYNCED_SOURCE_NOT_CAPTURED = (
        "dbfleet.E054",
        "a synced model's source lives in a database whose changes dbfleet cannot capture (not "
        "PostgreSQL, MariaDB/MySQL or SQLite)",
    )
    REPLICA_MIRRORS_ANOTHER_DATABASE = (
        "dbfleet.W001",
        'a replica\'s `TEST["MIRROR"]` names another database than its primary',
    )
    SOFT_RELATION_ACROSS_GROUPS = (
        "dbfleet.W002",
        "a relation spans two groups with `db_constraint=False`",
    )
    #: Retired: this problem is an error now, ``E034``; W003 is never reported again.
    UNHINTED_OPERATION = (
        "dbfleet.W003",
        "a `RunPython`/`RunSQL` without hints in an app split across databases (it runs on "
        "`DEFAULT_DATABASE` only); retired: now reported as `dbfleet.E034`, an error",
    )
    NO_PREPARED_TRANSACTIONS = (
        "dbfleet.W004",
        "a PostgreSQL database has `max_prepared_transactions = 0` (database check: "
        "`check --database`, `migrate`)",
    )
    REPLICA_ON_ANOTHER_SQLITE_FILE = (
        "dbfleet.W005",
        "a SQLite replica is another file than its primary's (SQLite does not replicate)",
    )
    REPLICA_WITHOUT_CONNECT_TIMEOUT = (
        "dbfleet.W006",
        "a replica on a server has no connect timeout in `OPTIONS` (a server that never "
        "answers would hang its reads)",
    )
    REPLICA_DOES_NOT_REPLICATE = (
        "dbfleet.W007",
        "a replica's database replicates from nothing (database check: `check --database`)",
    )
    UNAPPLIED_MIGRATIONS = (
        "dbfleet.W008",
        "a database has unapplied migrations (database check: `check --database`, `runserver` "
        "on Django 6)",
    )
    MIGRATIONS_UNKNOWN = (
        "dbfleet.W009",
        "a database could not be reached to look for unapplied migrations (database check)",
    )
    UNIQUE_WITHOUT_SHARD_KEY = (
        "dbfleet.W010",
        "a unique field or constraint of a sharded model leaves out its shard key (unique per "
        "shard only)",
    )
