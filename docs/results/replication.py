"""Compares the tables of two runs of the same pipeline (the committed ones and a rerun on
another machine, say) cell by cell, and says which tested findings survive the rerun.

    python3 docs/results/replication.py docs/results/ablation pipelines/results/ablation

Reads every `*.csv` with a `value` column present in both folders (provenance files are
skipped), matches cells on (model, method, dataset, condition, metric) and prints Markdown:
per table, the cells, the median and largest absolute difference, the share of rerun values
inside the first run's 95% interval; then, over every cell tested against its table's
reference, how many differences survive Holm's correction in each run and in both with the
same sign, and every one that survives in one run only. Standard library only.
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


def significant(row):
    p = number(row.get("p_holm"))
    return p is not None and p < 0.05


def main(first_dir, second_dir):
    names = sorted(
        n
        for n in os.listdir(first_dir)
        if n.endswith(".csv")
        and not n.endswith("-provenance.csv")
        and os.path.exists(os.path.join(second_dir, n))
    )
    print("| table | cells | median abs. difference | largest | rerun inside first interval |")
    print("|---|---:|---:|---:|---:|")
    tested = []
    for name in names:
        first = read(os.path.join(first_dir, name))
        second = read(os.path.join(second_dir, name))
        if first is None or second is None:
            continue
        common = [k for k in first if k in second]
        diffs, inside = [], 0
        for key in common:
            a, b = first[key], second[key]
            va, vb = number(a["value"]), number(b["value"])
            if va is None or vb is None:
                continue
            diffs.append(abs(va - vb))
            low, high = number(a.get("ci_low")), number(a.get("ci_high"))
            if low is not None and high is not None and low <= vb <= high:
                inside += 1
            if number(a.get("p_holm")) is not None and number(b.get("p_holm")) is not None:
                tested.append((name, key, a, b))
        if not diffs:
            continue
        print(
            f"| {name[:-4]} | {len(diffs)} | {statistics.median(diffs):.1f} | {max(diffs):.1f} "
            f"| {100 * inside / len(diffs):.0f}% |"
        )
    in_first = [t for t in tested if significant(t[2])]
    in_second = [t for t in tested if significant(t[3])]
    both = [
        t
        for t in in_first
        if significant(t[3])
        and (number(t[2]["diff_vs_reference"]) > 0) == (number(t[3]["diff_vs_reference"]) > 0)
    ]
    print()
    print(
        f"Tested cells: {len(tested)}; significant after Holm in the first run: {len(in_first)}, "
        f"in the rerun: {len(in_second)}, in both with the same sign: {len(both)}."
    )
    print()
    print("| table | model | method | dataset | condition | metric | first: diff (p_holm) | rerun: diff (p_holm) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, key, a, b in tested:
        if significant(a) != significant(b) or (
            significant(a)
            and (number(a["diff_vs_reference"]) > 0) != (number(b["diff_vs_reference"]) > 0)
        ):
            cells = " | ".join(key)
            print(
                f"| {name[:-4]} | {cells} | {number(a['diff_vs_reference']):+.1f} ({number(a['p_holm']):.3g}) "
                f"| {number(b['diff_vs_reference']):+.1f} ({number(b['p_holm']):.3g}) |"
            )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
