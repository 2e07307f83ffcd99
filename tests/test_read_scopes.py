"""Where read-your-writes state begins and ends: requests on pooled threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.signals import request_finished, request_started
from django.db import connections

from dbfleet.testing import capture_queries
from tests.conftest import Clock
from tests.library.models import Author
from tests.threads import run_in_thread

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


def read_author() -> list[str]:
    with capture_queries() as queries:
        list(Author.objects.all())
    return queries.aliases


def request(work: object) -> list[str]:
    """Run ``work`` as a server runs a request: between Django's request signals."""
    request_started.send(sender=None)
    try:
        return work()  # type: ignore[operator, no-any-return]
    finally:
        request_finished.send(sender=None)
        connections.close_all()


def test_a_write_outside_any_scope_pins_the_reads_after_it() -> None:
    def write_then_read() -> list[str]:
        Author.objects.create(first_name="Ada")
        return read_author()

    # A new thread, whose connections are closed when it ends.
    assert run_in_thread(write_then_read) == ["default"]


def test_a_pooled_thread_does_not_carry_pins_to_the_next_request(clock: Clock) -> None:
    """A server runs request after request on one thread, whose context stays.

    The clock stands still: the second request comes well inside the window.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(request, lambda: Author.objects.create(first_name="Ada")).result(timeout=60)
        # Another user's request, on the same thread, inside the read-your-writes window.
        assert pool.submit(request, read_author).result(timeout=60) == ["replica"]
