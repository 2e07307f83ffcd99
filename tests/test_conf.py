"""Reading DBFLEET: every problem is a check message, never an exception."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.core.signals import setting_changed
from django.test import override_settings

from dbfleet import conf
from dbfleet.conf import ReadYourWrites, WriteGuard, fleet_settings, get_topology, parse
from dbfleet.migrating.lint import disk_migrations
from dbfleet.topology import Replica

DATABASES = ("default", "books", "loans", "replica", "replica2")


def ids(raw: Any) -> list[str]:
    return [message.id or "" for message in parse(raw, DATABASES).problems]


def test_absent_means_unconfigured_defaults() -> None:
    config = parse(None, DATABASES)
    assert not config.configured
    assert config.default_database == "default"
    assert dict(config.routes) == {}
    assert config.problems == ()


def test_valid_settings_parse_without_problems() -> None:
    config = parse(
        {
            "ROUTES": {"books": "books", "library.Loan": "loans"},
            "REPLICAS": {"default": ["replica", {"alias": "replica2", "weight": 2}]},
            "DEFAULT_DATABASE": "default",
        },
        DATABASES,
    )
    assert config.problems == ()
    assert dict(config.routes) == {"books": "books", "library.Loan": "loans"}
    assert config.replicas == {"default": (Replica("replica"), Replica("replica2", 2))}


def test_not_a_dict() -> None:
    assert ids(["books"]) == ["dbfleet.E001"]


def test_unknown_key_suggests_the_close_one() -> None:
    (problem,) = parse({"ROUTE": {}}, DATABASES).problems
    assert problem.id == "dbfleet.E002"
    assert "'ROUTE'" in problem.msg
    assert problem.hint is not None and "Did you mean 'ROUTES'?" in problem.hint


@pytest.mark.parametrize(
    "routes",
    ["books", {"books.Book.x": "books"}, {"": "books"}, {"books": 1}, {3: "books"}],
)
def test_malformed_routes(routes: Any) -> None:
    assert ids({"ROUTES": routes}) == ["dbfleet.E003"]


def test_route_to_unknown_database_is_dropped() -> None:
    config = parse({"ROUTES": {"books": "bokks", "library": "loans"}}, DATABASES)
    assert [problem.id for problem in config.problems] == ["dbfleet.E004"]
    assert config.problems[0].hint is not None
    assert "Did you mean 'books'?" in config.problems[0].hint
    assert dict(config.routes) == {"library": "loans"}


@pytest.mark.parametrize("default", ["nope", 7])
def test_unknown_default_database_falls_back_to_default(default: Any) -> None:
    config = parse({"DEFAULT_DATABASE": default}, DATABASES)
    assert [problem.id for problem in config.problems] == ["dbfleet.E007"]
    assert config.default_database == "default"


@pytest.mark.parametrize(
    "replicas",
    [
        ["replica"],
        {"default": "replica"},
        {"default": [3]},
        {"default": [{"weight": 2}]},
        {"default": [{"alias": None}]},
        {1: ["replica"]},
    ],
)
def test_malformed_replicas(replicas: Any) -> None:
    assert ids({"REPLICAS": replicas}) == ["dbfleet.E008"]


@pytest.mark.parametrize("weight", [0, -3, "2", True, 1.5])
def test_bad_replica_weight_leaves_the_replica_out(weight: Any) -> None:
    config = parse({"REPLICAS": {"default": [{"alias": "replica", "weight": weight}]}}, DATABASES)
    assert [problem.id for problem in config.problems] == ["dbfleet.E026"]
    assert config.replicas == {"default": ()}


@pytest.mark.parametrize(
    "entry", [{"alias": "replica", "lag": 1}, {"alias": "replica", "wieght": 2}]
)
def test_unknown_replica_key_leaves_the_replica_out(entry: Any) -> None:
    config = parse({"REPLICAS": {"default": [entry]}}, DATABASES)
    assert [problem.id for problem in config.problems] == ["dbfleet.E027"]
    assert config.replicas == {"default": ()}


def test_each_problem_of_one_replica_entry_is_reported() -> None:
    entry = {"wieght": 2, "weight": 0}
    assert ids({"REPLICAS": {"default": [entry]}}) == [
        "dbfleet.E027",
        "dbfleet.E008",
        "dbfleet.E026",
    ]


def test_unknown_replica_or_primary() -> None:
    assert ids({"REPLICAS": {"default": ["replca"]}}) == ["dbfleet.E009"]
    assert ids({"REPLICAS": {"primary": ["replica"]}}) == ["dbfleet.E009"]


def test_replica_under_two_primaries_stays_with_the_first() -> None:
    config = parse({"REPLICAS": {"default": ["replica"], "books": ["replica"]}}, DATABASES)
    assert [problem.id for problem in config.problems] == ["dbfleet.E010"]
    assert config.replicas == {"default": (Replica("replica"),), "books": ()}


@pytest.mark.parametrize(
    ("raw", "check_id"),
    [
        ({"REPLICAS": {"default": ["replica"]}, "ROUTES": {"books": "replica"}}, "dbfleet.E011"),
        ({"REPLICAS": {"default": ["replica"]}, "DEFAULT_DATABASE": "replica"}, "dbfleet.E024"),
        ({"REPLICAS": {"default": ["replica"], "replica": ["replica2"]}}, "dbfleet.E025"),
    ],
    ids=["routed-to", "default-database", "chained"],
)
def test_replica_used_as_a_primary(raw: Any, check_id: str) -> None:
    """Three problems, three ids (they once shared E011)."""
    assert ids(raw) == [check_id]


@pytest.mark.parametrize(
    ("key", "check_id"),
    [
        ("RECOVERY_GRACE", "dbfleet.E020"),
        ("MAX_LAG", "dbfleet.E022"),
        ("REPLICA_COOLDOWN", "dbfleet.E028"),
        ("REPLICA_CHECK_INTERVAL", "dbfleet.E029"),
        ("READ_YOUR_WRITES_WINDOW", "dbfleet.E030"),
    ],
)
def test_each_seconds_setting_has_its_own_id(key: str, check_id: str) -> None:
    config = parse({key: "2"}, DATABASES)
    assert [problem.id for problem in config.problems] == [check_id]
    assert config.seconds[key] == parse({}, DATABASES).seconds[key]  # The default stands.


def test_settings_are_cached_and_reset_when_they_change() -> None:
    before = get_topology()
    assert get_topology() is before
    with override_settings(DBFLEET={"ROUTES": {"library": "loans"}}):
        assert fleet_settings().routes == {"library": "loans"}
        assert get_topology() is not before
    assert get_topology() is not before
    assert get_topology().route_for("library", "book") == "books"


@pytest.mark.parametrize("setting", sorted(conf.WATCHED_SETTINGS))
def test_one_reset_on_setting_changed_clears_every_registered_cache(
    setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conf, "_CLEARS", list(conf._CLEARS))
    cleared: list[str] = []
    conf.clears_on_reset(lambda: cleared.append("mine"))
    value = getattr(settings, setting, {})
    # What override_settings sends as it ends (enter=True would warn about DATABASES).
    setting_changed.send(sender=type(settings), setting=setting, value=value, enter=False)
    assert cleared == ["mine"]
    setting_changed.send(sender=type(settings), setting="USE_TZ", value=True, enter=True)
    assert cleared == ["mine"]  # A setting dbfleet derives nothing from.


def test_reset_forgets_the_migrations_on_disk() -> None:
    before = disk_migrations()
    assert disk_migrations() is before
    conf.reset()
    assert disk_migrations() is not before
    with override_settings(DBFLEET={"ROUTES": {"library": "loans"}}):
        assert disk_migrations() is not before


def test_reset_forgets_the_replica_read_table() -> None:
    from dbfleet.replicas.choice import READS

    READS[None]
    assert READS
    conf.reset()
    assert not READS


def test_modes_are_enums_that_compare_as_their_strings() -> None:
    config = parse({"WRITE_GUARD": "raise", "READ_YOUR_WRITES": "position"}, DATABASES)
    assert config.write_guard is WriteGuard.RAISE
    assert config.read_your_writes is ReadYourWrites.POSITION
    mode: str = parse({"READ_YOUR_WRITES": "position"}, DATABASES).read_your_writes
    assert mode == "position"  # What code written for strings compares.
    unset = parse({}, DATABASES)
    assert unset.write_guard is None and unset.read_your_writes is ReadYourWrites.TIME
