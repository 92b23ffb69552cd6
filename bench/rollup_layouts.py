"""The flush under the monthly rollup's two layouts, revision 0006 against 0007, side by side.

`python -m bench.rollup_layouts [ROUNDS]` (the bench's BENCH_* variables; it rebuilds the
bench database). Each round migrates the emptied tables to one layout, then to the
other (the order alternating), and times three flushes of 100,000 groups under each:
hour H, whose month's rollup rows are all new (the first hour of a month: what
`--only persist` measures, since it empties the tables first); hour H-1 of the same
month, whose rollup rows exist and are added to (every other hour of a month); and
H again, into a window that has the rows. Prints each case's median rates and the
ratio of each round.
"""

from __future__ import annotations

import statistics
import sys
from datetime import timedelta

from alembic import command
from sqlalchemy import text

from bench.run import DATABASE_URL, Bench, _persist_once, parse_args
from ingestor.database import alembic_config

GROUPS = 100_000
LAYOUTS = ("0006", "0007")
CASES = ("month rows new", "month rows existing", "into a window with rows")


def main(rounds: int) -> None:
    """Interleave `rounds` rounds of both layouts and print the medians and ratios."""
    bench = Bench(parse_args(["--only", "persist"]))
    config = alembic_config(DATABASE_URL)
    hour = bench.hour
    if hour.day == 1 and hour.hour == 0:  # H-1 must be in H's month
        hour += timedelta(hours=1)
    seconds: dict[tuple[str, str], list[float]] = {(layout, case): [] for layout in LAYOUTS for case in CASES}
    for round_number in range(rounds):
        for layout in LAYOUTS if round_number % 2 == 0 else LAYOUTS[::-1]:
            bench.reset()
            if layout == LAYOUTS[0]:
                command.downgrade(config, layout)
            else:
                command.upgrade(config, layout)
            with bench.database.engine.connect() as connection:
                assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == layout
            for case, flushed_hour in zip(CASES, (hour, hour - timedelta(hours=1), hour), strict=True):
                bench.hour = flushed_hour
                seconds[(layout, case)].append(_persist_once(bench, GROUPS))
    for case in CASES:
        old, new = (seconds[(layout, case)] for layout in LAYOUTS)
        ratios = ", ".join(f"{before / after:.2f}" for before, after in zip(old, new, strict=True))
        print(
            f"{case}: {LAYOUTS[0]} {GROUPS / statistics.median(old):,.0f} rows/s,"
            f" {LAYOUTS[1]} {GROUPS / statistics.median(new):,.0f} rows/s,"
            f" {statistics.median(old) / statistics.median(new):.2f}x (rounds: {ratios})"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
