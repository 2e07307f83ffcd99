"""Read-your-writes scopes and read preferences, kept in context variables.

What belongs to a request or a task (``use_primary``, ``use_replica``, the
writes of a ``read_your_writes`` scope) lives in context variables set with
tokens: nested scopes restore exactly what they found, and threads and asyncio
tasks never see each other's.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction
from django.db import connections
from django.db.transaction import TransactionManagementError

from dbfleet.conf import fleet_settings
from dbfleet.replicas.positions import primary_position

F = TypeVar("F", bound=Callable[..., Any])


class ReadPreference(enum.StrEnum):
    """What ``use_primary()`` / ``use_replica()`` ask of the reads inside them."""

    PRIMARY = "primary"
    REPLICA = "replica"


@dataclass
class Pin:
    """Reads of one group after a write to it: where they may go, until when."""

    #: Wall-clock time after which the pin no longer holds (infinity: until the scope ends).
    until: float
    #: The primary's replication position the replica must have replayed; None: unknown.
    position: str | None = None
    #: Set by a write (in this scope or the one it is nested in), not handed over.
    wrote: bool = False
    #: Written to since ``position`` was read from the primary.
    stale: bool = False


@dataclass
class Writes:
    """The writes of one scope (a request, a task, a ``read_your_writes`` block).

    Mutable on purpose: asyncio tasks started inside a scope, and threads that
    run with a copy of its context (asgiref's ``sync_to_async`` does), record
    their writes in it, so the rest of the scope reads them.
    """

    #: Pins end with the scope; outside any scope they last READ_YOUR_WRITES_WINDOW seconds.
    explicit: bool
    pins: dict[str, Pin] = field(default_factory=dict)
    #: The primaries written in this very scope.
    written: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class State:
    force: ReadPreference | None = None
    writes: Writes | None = None


NO_STATE = State()
STATE: ContextVar[State] = ContextVar("dbfleet_replicas", default=NO_STATE)
#: Writes made outside any scope, per context (a thread, a task).
IMPLICIT: ContextVar[Writes | None] = ContextVar("dbfleet_implicit_writes", default=None)


def end_implicit_scope(**kwargs: Any) -> None:
    """Forget the writes made outside any scope: a request starts or ends.

    Servers run request after request on pooled threads, whose context stays
    from one to the next: without this, one user's writes would pin the next
    user's reads for the window.
    """
    IMPLICIT.set(None)


#: The tokens of the scopes entered in this context, innermost last.
TOKENS: ContextVar[tuple[Token[State], ...]] = ContextVar("dbfleet_tokens", default=())


class Scope:
    """A context manager and decorator (of functions and coroutine functions) for one state.

    One object may be entered again, nested, and from several threads or tasks
    at once: the tokens live in the context, not on the object.
    """

    def state(self, current: State) -> State:
        raise NotImplementedError

    def __enter__(self) -> None:
        token = STATE.set(self.state(STATE.get()))
        TOKENS.set((*TOKENS.get(), token))

    def __exit__(self, *exc_info: object) -> None:
        *outer, token = TOKENS.get()
        TOKENS.set(tuple(outer))
        STATE.reset(token)

    def __call__(self, func: F) -> F:
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"{func.__qualname__} is a generator function: the scope would end before "
                "its body runs. Use the scope as a `with` block inside it."
            )
        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]


class Force(Scope):
    def __init__(self, force: ReadPreference) -> None:
        self.force = force

    def state(self, current: State) -> State:
        return State(self.force, current.writes)


class ReadYourWrites(Scope):
    """A read-your-writes scope.

    Nested in another one it starts with the outer scope's pins and hands its
    own writes back when it ends; a root scope (a request, ``fresh_scope()``)
    starts from nothing and keeps its writes to itself.
    """

    def __init__(
        self, position: str | None, pins: Mapping[str, Pin] | None = None, nested: bool = True
    ) -> None:
        self.pins = {} if pins is None else dict(pins)
        for primary, value in parse_position(position).items():
            self.pins[primary] = Pin(float("inf"), value or None)
        self.nested = nested

    def state(self, current: State) -> State:
        pins = {primary: Pin(pin.until, pin.position) for primary, pin in self.pins.items()}
        if self.nested and current.writes is not None:
            for primary, pin in current.writes.pins.items():
                pins.setdefault(primary, Pin(pin.until, pin.position, pin.wrote, pin.stale))
        return State(current.force, Writes(explicit=True, pins=pins))

    def __exit__(self, *exc_info: object) -> None:
        inner = STATE.get().writes
        super().__exit__(*exc_info)
        if self.nested and inner is not None and STATE.get().writes is not None:
            for primary in inner.written:
                note_write(primary)


def root_scope(pins: Mapping[str, Pin] | None = None) -> Scope:
    """A read-your-writes scope that inherits no pin (a request, a task, a test starts one)."""
    return ReadYourWrites(None, pins, nested=False)


def use_primary() -> Scope:
    """Read from primaries (as decorator or context manager), replicas stay unused."""
    return Force(ReadPreference.PRIMARY)


def use_replica() -> Scope:
    """Read from replicas even after a write or inside a transaction (for reporting code).

    A group falls back to its primary when none of its replicas is healthy.
    """
    return Force(ReadPreference.REPLICA)


def read_preference() -> ReadPreference | None:
    """``"primary"`` or ``"replica"`` inside ``use_primary()`` / ``use_replica()``, else None."""
    return STATE.get().force


def read_your_writes(position: str | None = None) -> Scope:
    """A scope whose writes later reads in it see: a request, a task, a ``with`` block.

    ``position`` (from ``write_position()`` in another scope) makes the reads
    here see that scope's writes too: a replica is used only once it has
    replayed them.
    """
    return ReadYourWrites(position)


def write_position() -> str:
    """Where this scope's writes reached on each primary, to hand to ``read_your_writes()``.

    An opaque string (JSON) that survives a task queue. It costs one query on
    each primary written since the last call. Call it once the writes have
    committed (after the ``atomic`` block, or in ``transaction.on_commit``).
    """
    writes = STATE.get().writes or IMPLICIT.get()
    positions: dict[str, str] = {}
    now = time.time()
    for primary, pin in (writes.pins if writes else {}).items():
        if pin.until > now:
            if pin.stale and connections[primary].in_atomic_block:
                raise TransactionManagementError(
                    f"write_position() inside a transaction on {primary!r}: the position "
                    "would not cover its commit. Call it after the atomic block, or hand the "
                    "task over in transaction.on_commit()."
                )
            settle_position(primary, pin)
            positions[primary] = pin.position or ""  # "": unknown, read from the primary.
    return json.dumps(positions, separators=(",", ":"), sort_keys=True)


def parse_position(position: str | None) -> dict[str, str]:
    if not position:
        return {}
    try:
        parsed = json.loads(position)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in parsed.items()
    ):
        raise ValueError(
            f"{position!r} is not a position from dbfleet.write_position(); pass that "
            "string unchanged."
        )
    return parsed


def settle_position(primary: str, pin: Pin) -> None:
    """Read the primary's position for a pin written since it was last read."""
    if pin.stale:
        pin.position = primary_position(primary)
        pin.stale = False


def note_write(primary: str) -> None:
    """Record a write to ``primary`` in the current scope."""
    writes = STATE.get().writes or IMPLICIT.get()
    if writes is None:
        writes = Writes(explicit=False)
        IMPLICIT.set(writes)
    until = float("inf") if writes.explicit else time.time() + window()
    writes.written.add(primary)
    pin = writes.pins.get(primary)
    if pin is None:
        writes.pins[primary] = Pin(until, wrote=True, stale=True)
    else:
        pin.until = max(pin.until, until)
        pin.wrote = pin.stale = True


def window() -> float:
    return fleet_settings().seconds["READ_YOUR_WRITES_WINDOW"]
