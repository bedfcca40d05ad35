"""The numbers that docs/results/README.md's sections on the follow-up runs quote (the
image-to-text run and the two sensitivity runs of Ours), read from their results folders (the
tables' CSVs and `metrics.parquet`), so the sections can be checked against the files and
rewritten from a new run.

    python docs/results/follow_ups.py image-to-text docs/results/image-to-text
    python docs/results/follow_ups.py sensitivity docs/results/sensitivity
    python docs/results/follow_ups.py sensitivity docs/results/sensitivity-seeds

Needs pyarrow. Cells print as findings.py prints them: the value with its 95% interval over
seeds and items, the difference from the table's reference with its interval, the
Holm-adjusted p and "†" where it is under 0.05 (the tables' mark); per-seed values are in
percent, in seed order.
"""

import sys

from findings import FAMILIES, cell, cell_text, load, marked, per_seed, seeds_text


def value(rows, family, method, dataset, condition, metric="accuracy"):
    r = cell(rows, family, method, dataset, condition, metric)
    return None if r is None else float(r["value"])


def image_to_text(folder):
    tables, metrics = load(folder)
    pointing, conditions = tables["pointing"], tables["conditions"]
    for dataset in ("arithmetic", "creatures"):
        print(f"\n## {dataset}: follow rates, and the rate of an answer that ignores the picture")
        for fam in FAMILIES:
            for method in ("vanilla", "fft_mix", "ours"):
                rp = value(conditions, fam, method, dataset, "rp")
                print(f"  {fam}-s {method}: reference (100 - RP) / 3 = {(100 - rp) / 3:.1f} (RP {rp:.1f})")
                for condition in ("ri", "ri_seen"):
                    r = cell(pointing, fam, method, dataset, condition, "follow_rate")
                    seeds = per_seed(metrics, fam, method, dataset, condition, "follow_rate")
                    print(f"    {condition} follow: {cell_text(r)}; per seed {seeds_text(seeds)}")

    print("\n## Held-out against seen: the largest gap between twin cells of the pointing table")
    gaps = []
    for r in pointing:
        if r["condition"] != "ri":
            continue
        twin = cell(pointing, r["model"][:-2], r["method"], r["dataset"], "ri_seen", r["metric"])
        gaps.append((abs(float(r["value"]) - float(twin["value"])), r["model"], r["method"], r["dataset"], r["metric"]))
    print("  " + "; ".join(f"{g[0]:.1f} ({', '.join(g[1:])})" for g in sorted(gaps, reverse=True)[:3]))

    print("\n## Accuracy by what the picture points at (arithmetic, RI seen)")
    for fam in FAMILIES:
        for method in ("vanilla", "fft_mix", "ours"):
            for metric in ("accuracy_points_gold", "accuracy_points_wrong", "accuracy_points_none"):
                r = cell(pointing, fam, method, "arithmetic", "ri_seen", metric)
                print(f"  {fam}-s {method} {metric}: {cell_text(r)}")

    print("\n## Text-heavy accuracy (conditions table)")
    for fam in FAMILIES:
        for method in ("vanilla", "ours"):
            for dataset, condition in (("arithmetic", "rp"), ("arithmetic", "ri"), ("arithmetic", "ri_seen"), ("arithmetic", "th")):
                r = cell(conditions, fam, method, dataset, condition)
                print(f"  {fam}-s {method} {dataset}/{condition}: {cell_text(r)}")

    for name, rows in (("pointing", pointing), ("conditions", conditions)):
        hits = [r for r in rows if marked(r)]
        print(f"\n## {name}: {len(hits)} of {sum(1 for r in rows if r.get('p_holm'))} tests marked")
        for r in hits:
            print(f"  {r['model']} {r['method']} {r['dataset']}/{r['condition']}/{r['metric']}: {cell_text(r)}")


def sensitivity(folder):
    tables, metrics = load(folder)
    for name in ("conditions", "pointing", "orig_perturbed"):
        rows = tables[name]
        tested = [r for r in rows if r.get("p_holm")]
        hits = [r for r in tested if marked(r)]
        print(f"\n## {name}: {len(hits)} of {len(tested)} tests marked; every cell of the reference and of Ours")
        for r in rows:
            print(f"  {r['method']} {r['dataset']}/{r['condition']}/{r['metric']}: {cell_text(r)}")
    print("\n## Per seed (metrics.parquet): colours and creatures accuracy, MD follow rates")
    methods = sorted({m["method"] for m in metrics}, key=lambda m: (m != "fft_mix", m))
    for method in methods:
        for dataset, condition, metric in (
            ("colors", "none", "accuracy"),
            ("colors", "uf", "accuracy"),
            ("colors", "md", "follow_rate"),
            ("creatures", "rp", "accuracy"),
            ("shapes", "md", "follow_rate"),
        ):
            seeds = per_seed(metrics, "llava", method, dataset, condition, metric)
            print(f"  {method} {dataset}/{condition}/{metric}: {seeds_text(seeds)}")


if __name__ == "__main__":
    {"image-to-text": image_to_text, "sensitivity": sensitivity}[sys.argv[1]](sys.argv[2])
