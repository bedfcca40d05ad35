"""Compares the tables of two runs of the same pipeline (the committed ones and a rerun on
another machine, say) cell by cell, and says which tested findings survive the rerun.

    python3 docs/results/replication.py docs/results/ablation pipelines/results/ablation

Reads every `*.csv` with a `value` column present in both folders (provenance files are
skipped), matches cells on (model, method, dataset, condition, metric) and prints Markdown:
per table, the cells, the median and largest absolute difference, the share of rerun values
inside the first run's 95% interval (and inside its item-level interval, `items_ci_low` to
`items_ci_high`, where the first run's tables have one); then, for each test the first run's
tables carry (`p_holm`; `mcnemar_p_holm`, the item-level test, where present), how many
differences it marks and how many of those have the same sign in the rerun and are marked
there too; then every cell marked in one run only or with opposite signs. Standard library
only.
"""

import csv
import os
import statistics
import sys

KEY = ("model", "method", "dataset", "condition", "metric")


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "value" not in rows[0]:
        return None
    return {tuple(r[k] for k in KEY): r for r in rows}


def number(text):
    return float(text) if text not in ("", None) else None


def significant(row, column="p_holm"):
    p = number(row.get(column))
    return p is not None and p < 0.05


def inside(row, value, low, high):
    low, high = number(row.get(low)), number(row.get(high))
    return low is not None and high is not None and low <= value <= high


def same_sign(a, b):
    da, db = number(a.get("diff_vs_reference")), number(b.get("diff_vs_reference"))
    return da is not None and db is not None and da * db > 0


def main(first_dir, second_dir):
    names = sorted(
        n
        for n in os.listdir(first_dir)
        if n.endswith(".csv")
        and not n.endswith("-provenance.csv")
        and os.path.exists(os.path.join(second_dir, n))
    )
    print(
        "| table | cells | median abs. difference | largest | rerun inside first interval "
        "| rerun inside first's item-level interval |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    tested = []
    for name in names:
        first = read(os.path.join(first_dir, name))
        second = read(os.path.join(second_dir, name))
        if first is None or second is None:
            continue
        common = [k for k in first if k in second]
        diffs, within, within_items, with_items = [], 0, 0, 0
        for key in common:
            a, b = first[key], second[key]
            va, vb = number(a["value"]), number(b["value"])
            if va is None or vb is None:
                continue
            diffs.append(abs(va - vb))
            within += inside(a, vb, "ci_low", "ci_high")
            if number(a.get("items_ci_low")) is not None:
                with_items += 1
                within_items += inside(a, vb, "items_ci_low", "items_ci_high")
            if number(a.get("p_holm")) is not None and number(b.get("diff_vs_reference")) is not None:
                tested.append((name, key, a, b))
        if not diffs:
            continue
        items = f"{100 * within_items / with_items:.0f}%" if with_items else "–"
        print(
            f"| {name[:-4]} | {len(diffs)} | {statistics.median(diffs):.1f} | {max(diffs):.1f} "
            f"| {100 * within / len(diffs):.0f}% | {items} |"
        )
    print()
    print(
        "Differences from the reference marked in the first run (Holm-adjusted p under 0.05), "
        "and how many have the same sign in the rerun and are marked there too (by the "
        "rerun's own `p_holm`):"
    )
    print()
    print("| first run's test | tested | marked | same sign in the rerun | also marked in the rerun |")
    print("|---|---:|---:|---:|---:|")
    for column, label in (("p_holm", "`p_holm`"), ("mcnemar_p_holm", "`mcnemar_p_holm` (items)")):
        cells = [t for t in tested if number(t[2].get(column)) is not None]
        if not cells:
            continue
        marked = [t for t in cells if significant(t[2], column)]
        kept = [t for t in marked if same_sign(t[2], t[3])]
        both = [t for t in kept if significant(t[3])]
        share = f" ({100 * len(kept) / len(marked):.0f}%)" if marked else ""
        print(f"| {label} | {len(cells)} | {len(marked)} | {len(kept)}{share} | {len(both)} |")
    print()
    print("Cells marked in one run only, or with opposite signs (by `p_holm` in each run):")
    print()
    print("| table | model | method | dataset | condition | metric | first: diff (p_holm) | rerun: diff (p_holm) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, key, a, b in tested:
        if significant(a) != significant(b) or (significant(a) and not same_sign(a, b)):
            cells = " | ".join(key)
            rerun_p = number(b.get("p_holm"))
            rerun_p = "–" if rerun_p is None else f"{rerun_p:.3g}"
            print(
                f"| {name[:-4]} | {cells} | {number(a['diff_vs_reference']):+.1f} ({number(a['p_holm']):.3g}) "
                f"| {number(b['diff_vs_reference']):+.1f} ({rerun_p}) |"
            )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
