"""Read-your-writes across requests: a signed cookie after a request that wrote."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.db import connections
from django.http import HttpRequest, HttpResponseBase

from dbfleet.conf import fleet_settings, get_topology
from dbfleet.replicas.scopes import STATE, Pin, Writes, root_scope, settle_position

COOKIE_SALT = "dbfleet.read_your_writes"


class ReadYourWritesMiddleware:
    """Keep a user's reads on the primary (or caught-up replicas) right after they wrote.

    Each request is a ``read_your_writes`` scope. A request that wrote sets a
    signed cookie, so the same browser's next requests see the write: for
    READ_YOUR_WRITES_WINDOW seconds in "time" mode, or until a replica has
    replayed it in "position" mode.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with root_scope(pins_from_cookie(request)):
            writes = _scope_writes()
            response = self.get_response(request)
            save_pins(writes, request, response)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        with root_scope(pins_from_cookie(request)):
            writes = _scope_writes()
            response = await self.get_response(request)
            if writes.written:  # Else no thread hop.
                await sync_to_async(save_pins)(writes, request, response)
        return response


def _scope_writes() -> Writes:
    writes = STATE.get().writes
    assert writes is not None  # Inside a read_your_writes scope.
    return writes


def pins_from_cookie(request: HttpRequest) -> dict[str, Pin]:
    """The pins a previous request's writes left in the cookie and that still hold."""
    config = fleet_settings()
    value = request.get_signed_cookie(config.cookie, default=None, salt=COOKIE_SALT)
    try:
        entries = json.loads(value) if value else {}
        now = time.time()
        return {
            primary: Pin(float(until), position or None)
            for primary, (until, position) in entries.items()
            if until > now and primary in get_topology().groups
        }
    except (ValueError, TypeError, AttributeError):
        return {}


def save_pins(writes: Writes, request: HttpRequest, response: HttpResponseBase) -> None:
    """Put this request's pins in the cookie when it wrote."""
    if not writes.written:
        return
    config = fleet_settings()
    now = time.time()
    lifetime = config.seconds["READ_YOUR_WRITES_WINDOW"]
    by_position = config.read_your_writes == "position"
    if by_position:  # Past MAX_LAG, a replica that has not replayed the write is skipped.
        lifetime = max(lifetime, config.seconds["MAX_LAG"])
    entries: dict[str, tuple[float, str | None]] = {}
    for primary, pin in writes.pins.items():
        if primary in writes.written:
            # Inside a transaction (one the middleware runs in) the position would
            # not cover the commit: the pin then keeps to the primary instead.
            if by_position and not connections[primary].in_atomic_block:
                settle_position(primary, pin)
            position = pin.position if by_position and not pin.stale else None
            entries[primary] = (now + lifetime, position)
        elif now < pin.until < float("inf"):  # From the cookie, still holding.
            entries[primary] = (pin.until, pin.position)
    response.set_signed_cookie(
        config.cookie,
        json.dumps(entries, separators=(",", ":")),
        salt=COOKIE_SALT,
        # Whole seconds, rounded up: the entries carry their own expiry.
        max_age=math.ceil(max(until for until, _ in entries.values()) - now),
        secure=request.is_secure(),
        httponly=True,
        samesite="Lax",
    )
