"""Two-phase commit: the protocol, the decision log, recovery of in-doubt transactions."""

from dbfleet.transactions.two_phase.protocol import Protocol, State, check_engines, two_phase_step
from dbfleet.transactions.two_phase.recovery import (
    Action,
    Outcome,
    Prepared,
    Recovery,
    find_in_doubt,
    participants,
    recover,
)

__all__ = [
    "Action",
    "Outcome",
    "Prepared",
    "Protocol",
    "Recovery",
    "State",
    "check_engines",
    "find_in_doubt",
    "participants",
    "recover",
    "two_phase_step",
]
