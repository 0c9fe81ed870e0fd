"""Figures and surviving mutants of a cosmic-ray session (used by scripts/mutate).

    python3 mutation/survivors.py SESSION.sqlite

Prints one line per survivor, ``file:line:col operator | the original source line``, then the
figures: mutants made (excluding those the operator filter skipped), killed, survived.
"""

from __future__ import annotations

import linecache
import sqlite3
import sys


def main(session: str) -> None:
    db = sqlite3.connect(session)
    rows = db.execute(
        "SELECT s.module_path, s.start_pos_row, s.start_pos_col, s.operator_name,"
        " r.worker_outcome, r.test_outcome FROM mutation_specs s"
        " JOIN work_results r ON r.job_id = s.job_id ORDER BY s.module_path, s.start_pos_row"
    ).fetchall()
    counts = {"made": 0, "killed": 0, "survived": 0, "incompetent": 0}
    for path, row, col, operator, worker, test in rows:
        if str(worker).upper().endswith("SKIPPED"):
            continue
        counts["made"] += 1
        outcome = str(test).lower().rpartition(".")[2]
        counts[outcome if outcome in counts else "incompetent"] += 1
        if outcome == "survived":
            line = linecache.getline(path, row).strip()
            print(f"{path}:{row}:{col} {operator.removeprefix('core/')} | {line[:100]}")
    pending = db.execute(
        "SELECT COUNT(*) FROM work_items WHERE job_id NOT IN (SELECT job_id FROM work_results)"
    ).fetchone()[0]
    print(
        f"made {counts['made']}, killed {counts['killed']}, survived {counts['survived']},"
        f" incompetent {counts['incompetent']}" + (f", not run yet {pending}" if pending else "")
    )


if __name__ == "__main__":
    main(sys.argv[1])
