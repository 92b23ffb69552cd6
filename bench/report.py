"""The bench's table: its rows, their targets, and the latency percentiles they show."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    """One line of the table."""

    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    detail: str = ""

    @property
    def shown(self) -> str:
        # Ratios to two decimals: 0.76 must not read as a met 0.8.
        return f"{self.value:,.2f} {self.unit}" if self.unit == "×" else f"{self.value:,.1f} {self.unit}"


@dataclass
class Report:
    """The rows of one run, printed as they come and as one table at the end."""

    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        mark = "" if row.met is None else (" [ok]" if row.met else " [MISSED]")
        print(f"  {row.name}: {row.shown} {row.detail}{mark}", flush=True)
        return row

    def table(self) -> str:
        lines = ["| measurement | result | target | notes |", "|---|---|---|---|"]
        for row in self.rows:
            met = "" if row.met is None else (" ✓" if row.met else " ✗")
            lines.append(f"| {row.name} | {row.shown} | {row.target}{met} | {row.detail} |")
        return "\n".join(lines)


def percentile(samples: list[float], q: float) -> float:
    """The `q` quantile of `samples` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_row(
    name: str, samples: list[float], target: bool = True, what: str = "requests", limit_ms: float = 50
) -> Row:
    """The p99 of `samples` (seconds) against `limit_ms` (the queries' 50 ms by default), p50 in the notes."""
    p99 = percentile(samples, 0.99) * 1000
    return Row(
        name,
        p99,
        "ms p99",
        f"< {limit_ms:g} ms" if target else "",
        (p99 < limit_ms) if target else None,
        f"p50 {percentile(samples, 0.5) * 1000:.1f} ms, {len(samples)} {what}",
    )
