"""Keep only the mutants inside named functions: the others are marked skipped, as cosmic-ray's
own filters do (used by scripts/mutate when a target's config lists functions).

    python3 mutation/functions.py SESSION.sqlite CONFIG.toml

CONFIG's ``[hgrun.mutate] functions`` lists ``path::Qualified.name`` entries; a mutant counts
when its first line is inside one of them. A target without that key is left whole.
"""

from __future__ import annotations

import ast
import sqlite3
import sys
import tomllib
from pathlib import Path


def spans(path: str, names: set[str]) -> list[tuple[int, int]]:
    """(first line, last line) of each function of ``path`` named in ``names``."""
    tree = ast.parse(Path(path).read_text())
    found: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                if name in names:
                    # From its decorators, so a mutant of one counts as inside.
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    found[name] = (first, child.end_lineno or child.lineno)
                visit(child, f"{name}.")

    visit(tree, "")
    if missing := names - set(found):
        raise SystemExit(f"{path}: no function {', '.join(sorted(missing))} (renamed?)")
    return list(found.values())


def main(session: str, config: str) -> None:
    wanted = tomllib.loads(Path(config).read_text()).get("hgrun", {}).get("mutate", {})
    entries: list[str] = wanted.get("functions", [])
    if not entries:
        return
    by_path: dict[str, set[str]] = {}
    for entry in entries:
        path, _, name = entry.partition("::")
        by_path.setdefault(path, set()).add(name)
    ranges = {path: spans(path, names) for path, names in by_path.items()}
    db = sqlite3.connect(session)
    skipped = 0
    with db:
        rows = db.execute(
            "SELECT s.job_id, s.module_path, s.start_pos_row FROM mutation_specs s"
            " LEFT JOIN work_results r ON r.job_id = s.job_id WHERE r.job_id IS NULL"
        ).fetchall()
        for job_id, path, row in rows:
            inside = any(first <= row <= last for first, last in ranges.get(path, []))
            if not inside:
                db.execute(
                    "INSERT INTO work_results (job_id, worker_outcome, output)"
                    " VALUES (?, 'SKIPPED', 'outside the functions under test')",
                    (job_id,),
                )
                skipped += 1
    print(f"{skipped} mutants outside {', '.join(entries)} skipped", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
