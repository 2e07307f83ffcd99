"""Timing and reporting shared by every benchmark.

The machines these run on are shared and noisy, so a benchmark never times one
long stretch per case: it runs many short rounds, each timing every case once
in a random order, and compares cases round by round. Slow spells then hit all
cases alike, and medians drop the rounds that were disturbed.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console, RenderableType
from rich.table import Table

console = Console(highlight=False)
if not console.is_terminal:
    # Piped or captured output would wrap every table at rich's 80 columns.
    console.width = 120


class Unavailable(Exception):
    """A benchmark cannot run on this machine; the message says what is missing and the fix."""


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Case:
    """One way of doing the measured operation.

    ``run(n)`` does the operation ``n`` times and is timed; ``prepare()`` runs
    untimed before each batch (to install the case's router, for example).
    """

    name: str
    run: Callable[[int], object]
    prepare: Callable[[], object] = _nothing


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator``, optionally with the most it may be."""

    numerator: str
    denominator: str
    at_most: float | None = None


@dataclass(frozen=True)
class Unit:
    """How a time is printed: ``name`` and how many nanoseconds make one."""

    name: str
    nanoseconds: float

    def format(self, ns: float) -> str:
        value = ns / self.nanoseconds
        return f"{value:,.{2 if value < 10 else 1}f} {self.name}"


NS = Unit("ns", 1)
US = Unit("µs", 1_000)
SECONDS = Unit("s", 1_000_000_000)


def measure(
    cases: Sequence[Case], *, rounds: int, batch: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Nanoseconds per operation for each case: one sample per case and round.

    Each round runs the cases in a new random order (seeded, so runs repeat):
    a fixed or rotated order would always put the same case after the same
    neighbour, and whatever a case leaves behind (caches, allocations) would
    bias the next one. The garbage collector is off while timing: a collection
    lands on whichever case happens to allocate at that moment.
    """
    samples: dict[str, list[float]] = {case.name: [] for case in cases}
    order = list(cases)
    shuffle = random.Random(0).shuffle
    gc.collect()
    gc.disable()
    try:
        for index in range(warmup + rounds):
            # Untimed: frees the round's reference cycles before they pile up.
            gc.collect(0)
            shuffle(order)
            for case in order:
                case.prepare()
                start = time.perf_counter_ns()
                case.run(batch)
                elapsed = time.perf_counter_ns() - start
                if index >= warmup:
                    samples[case.name].append(elapsed / batch)
    finally:
        gc.enable()
    return samples


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """The 25th, 50th and 75th percentiles."""
    if len(values) == 1:  # A benchmark whose rounds take seconds may run only one.
        return values[0], values[0], values[0]
    low, middle, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, middle, high


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """A 95% confidence interval for the median, from order statistics.

    It assumes nothing about the distribution, which on a noisy machine is
    skewed (a disturbed batch is only ever slower).
    """
    ordered = sorted(values)
    half_width = 0.98 * math.sqrt(len(ordered))  # 1.96 * sqrt(n) / 2
    low = max(math.floor(len(ordered) / 2 - half_width), 0)
    high = min(math.ceil(len(ordered) / 2 + half_width), len(ordered) - 1)
    return ordered[low], ordered[high]


def paired_ratios(
    samples: Mapping[str, Sequence[float]], numerator: str, denominator: str
) -> list[float]:
    """Round-by-round ratios: each compares two batches timed moments apart."""
    return [a / b for a, b in zip(samples[numerator], samples[denominator], strict=True)]


def report(
    title: str,
    samples: Mapping[str, Sequence[float]],
    *,
    unit: Unit,
    ratios: Sequence[Ratio] = (),
    limits: Mapping[str, float] | None = None,
    note: RenderableType = "",
) -> bool:
    """Print medians and ratios as tables; return whether every target was met.

    ``limits`` maps a case to the most nanoseconds its median may take.
    """
    cases, cases_met = case_table(title, samples, unit, limits or {})
    console.print(cases)
    ratios_met = True
    if ratios:
        table, ratios_met = ratio_table(samples, ratios)
        console.print(table)
    if note:
        console.print(note)
    console.print()
    return cases_met and ratios_met


def case_table(
    title: str, samples: Mapping[str, Sequence[float]], unit: Unit, limits: Mapping[str, float]
) -> tuple[Table, bool]:
    """Median and spread per case, with its limit if it has one."""
    met = True
    rounds = min(len(values) for values in samples.values())
    table = Table(title=f"{title} ({rounds} interleaved rounds)", title_justify="left")
    table.add_column("case")
    table.add_column(f"median {unit.name}/op", justify="right")
    table.add_column("p25 … p75", justify="right")
    table.add_column("target", justify="right")
    for name, values in samples.items():
        low, middle, high = quartiles(values)
        target = ""
        if name in limits:
            ok = middle <= limits[name]
            met &= ok
            target = f"< {unit.format(limits[name])} {verdict(ok)}"
        spread = f"{unit.format(low)} … {unit.format(high)}"
        table.add_row(name, unit.format(middle), spread, target)
    return table, met


def ratio_table(
    samples: Mapping[str, Sequence[float]], ratios: Sequence[Ratio]
) -> tuple[Table, bool]:
    """Each ratio as the median of per-round ratios, with its interval and target."""
    met = True
    table = Table()
    table.add_column("ratio (median of per-round ratios)")
    table.add_column("median", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("ratio of medians", justify="right")
    table.add_column("target", justify="right")
    for ratio in ratios:
        per_round = paired_ratios(samples, ratio.numerator, ratio.denominator)
        middle = statistics.median(per_round)
        low, high = median_interval(per_round)
        of_medians = statistics.median(samples[ratio.numerator]) / statistics.median(
            samples[ratio.denominator]
        )
        target = ""
        if ratio.at_most is not None:
            ok = middle <= ratio.at_most
            met &= ok
            target = f"≤ {ratio.at_most:.3f} {verdict(ok)}"
        table.add_row(
            f"{ratio.numerator} / {ratio.denominator}",
            f"{middle:.4f}",
            f"{low:.4f} … {high:.4f}",
            f"{of_medians:.4f}",
            target,
        )
    return table, met


def verdict(ok: bool) -> str:
    """The word for a target: met (green) or MISSED (red)."""
    return "[green]met[/green]" if ok else "[red]MISSED[/red]"
