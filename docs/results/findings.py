"""The numbers that docs/results/README.md's "The paper's findings, one by one" quotes, read from
one results folder of `pipelines/ablation.yaml` (its tables' CSVs and `metrics.parquet`), so
that the section can be checked against the files and rewritten from a new run.

    python docs/results/findings.py docs/results/ablation   # needs pyarrow

Prints plain text, one block per finding: per-seed values from `metrics.parquet` (percent, seed
order), and from the tables' CSVs each quoted cell's value and its difference from the table's
reference with the 95% interval over seeds and items and the Holm-adjusted p ("†" where it is
under 0.05, the tables' mark).
"""

import csv
import os
import statistics
import sys

import pyarrow.parquet as pq

FAMILIES = ("blip", "llava", "qwen")
REGULARISERS = ("kl", "js", "rg", "adv", "ours")
ALPHA = 0.05


def load(folder):
    tables = {}
    for name in os.listdir(folder):
        if name.endswith(".csv") and not name.endswith("-provenance.csv"):
            with open(os.path.join(folder, name)) as f:
                tables[name[: -len(".csv")]] = list(csv.DictReader(f))
    metrics = pq.read_table(os.path.join(folder, "metrics.parquet")).to_pylist()
    return tables, metrics


def per_seed(metrics, family, method, dataset, condition, metric="accuracy", stage_prefix=None):
    rows = [
        m
        for m in metrics
        if m["family"] == family
        and m["method"] == method
        and m["dataset"] == dataset
        and m["condition"] == condition
        and m["metric"] == metric
        and (stage_prefix is None or m["stage"].startswith(stage_prefix))
    ]
    rows.sort(key=lambda m: int(m["seed"]))
    return [100 * m["value"] for m in rows]


def seeds_text(values):
    return ", ".join(f"{v:.1f}" for v in values)


def marked(row):
    return row.get("p_holm") not in (None, "") and float(row["p_holm"]) < ALPHA


def cell(rows, family, method, dataset, condition, metric="accuracy"):
    for r in rows:
        if (
            r["model"] == f"{family}-s"
            and r["method"] == method
            and r["dataset"] == dataset
            and r["condition"] == condition
            and r["metric"] == metric
        ):
            return r
    return None


def cell_text(r):
    if r is None:
        return "(no cell)"
    text = f"{float(r['value']):.1f} [{float(r['ci_low']):.1f}, {float(r['ci_high']):.1f}]"
    if r.get("diff_vs_reference"):
        text += (
            f"; vs {r['reference']} {float(r['diff_vs_reference']):+.1f}"
            f" [{float(r['diff_ci_low']):.1f}, {float(r['diff_ci_high']):.1f}]"
            f" p_holm {float(r['p_holm']):.3f}{' †' if marked(r) else ''}"
        )
    return text


def show(title, rows, cells):
    print(f"\n## {title}")
    for family, method, dataset, condition, metric in cells:
        r = cell(rows, family, method, dataset, condition, metric)
        print(f"  {family}-s {method} {dataset}/{condition}/{metric}: {cell_text(r)}")


def main(folder):
    tables, metrics = load(folder)
    t5, pointing = tables["table5"], tables["pointing"]

    print("## Vanilla clean colour accuracy per seed (test split), and under UF")
    for fam in FAMILIES:
        clean = per_seed(metrics, fam, "vanilla", "colors", "none", stage_prefix="evaluate_vanilla")
        uf = per_seed(metrics, fam, "vanilla", "colors", "uf", stage_prefix="evaluate_vanilla")
        shapes = per_seed(metrics, fam, "vanilla", "shapes", "none", stage_prefix="evaluate_vanilla")
        reading = sum(v >= 80 for v in clean)
        print(f"  {fam}-s clean {seeds_text(clean)} (>= 80%: {reading}); UF {seeds_text(uf)}")
        print(f"  {fam}-s shapes clean {seeds_text(shapes)}")

    show(
        "H1: Vanilla against FFT w/ D_mixed on colours (Table 5)",
        t5,
        [(f, "vanilla", "colors", c, "accuracy") for f in FAMILIES for c in ("none", "uf", "md")],
    )
    show(
        "H1: MD follow rates of Vanilla (pointing)",
        pointing,
        [(f, "vanilla", d, "md", "follow_rate") for f in FAMILIES for d in ("colors", "shapes")],
    )
    print("\n## H2: Vanilla arithmetic RI follow rate per seed")
    for fam in FAMILIES:
        rate = per_seed(metrics, fam, "vanilla", "arithmetic", "ri", "follow_rate", "evaluate_vanilla")
        print(f"  {fam}-s {seeds_text(rate)}")
    show(
        "H2: follow rates and TH (pointing, Table 5)",
        pointing + t5,
        [(f, "vanilla", "arithmetic", "ri", "follow_rate") for f in FAMILIES]
        + [(f, "vanilla", "arithmetic", c, "accuracy") for f in FAMILIES for c in ("rp", "th")],
    )
    if "probe" in tables:
        # Per seed: `mipipe compare pipelines/ablation.yaml --stage evaluate_probe`.
        show("Probe (chance 25%)", tables["probe"], [(f, "vanilla", "signs", "none", "accuracy") for f in FAMILIES])

    print("\n## H3: FFT w/ D_mixed colours per seed, clean / UF")
    for fam in FAMILIES:
        clean = per_seed(metrics, fam, "fft_mix", "colors", "none")
        uf = per_seed(metrics, fam, "fft_mix", "colors", "uf")
        print(f"  {fam}-s clean {seeds_text(clean)}; UF {seeds_text(uf)}")

    print("\n## Every marked cell (p_holm < 0.05), by table")
    for name in sorted(tables):
        for r in tables[name]:
            if marked(r):
                print(
                    f"  {name}: {r['model']} {r['method']} {r['dataset']}/{r['condition']}/"
                    f"{r['metric']}: {cell_text(r)}"
                )

    print("\n## H4/H5: the regularisers against FFT w/ D_mixed")
    tests = [
        r
        for name in ("table1", "table5", "table11", "causal_effect", "pointing")
        for r in tables[name]
        if r["method"] in REGULARISERS and r.get("p_holm")
    ]
    widths = [float(r["diff_ci_high"]) - float(r["diff_ci_low"]) for r in tests if r["metric"] == "accuracy"]
    largest = max(
        (r for r in tests if r["metric"] == "accuracy"),
        key=lambda r: abs(float(r["diff_vs_reference"])),
    )
    print(
        f"  tests {len(tests)}, marked {sum(marked(r) for r in tests)}, "
        f"unadjusted p < 0.05: {sum(float(r['p_value']) < 0.05 for r in tests)}, "
        f"item-level McNemar marked: {sum(r.get('mcnemar_p_holm') not in (None, '') and float(r['mcnemar_p_holm']) < ALPHA for r in tests)}"
    )
    print(f"  median width of the accuracy difference intervals: {statistics.median(widths):.1f} points")
    print(f"  largest accuracy difference: {largest['model']} {largest['method']} {largest['dataset']}/{largest['condition']}: {cell_text(largest)}")
    show(
        "H4: Ours on colours under UF (Table 5)",
        t5,
        [(f, m, "colors", "uf", "accuracy") for f in FAMILIES for m in ("ours", "adv")],
    )
    show("H6: VQA Overall (Table 2, against Vanilla)", tables["table2"], [(f, m, "vqa_overall", "none", "accuracy") for f in FAMILIES for m in ("vanilla", "fft_vqa", "ours")])

    print("\n## H7: FFT w/ D_VQA per seed (clean)")
    for fam in FAMILIES:
        for dataset, clean in (("colors", "none"), ("creatures", "rp")):
            vqa = per_seed(metrics, fam, "fft_vqa", dataset, clean)
            van = per_seed(metrics, fam, "vanilla", dataset, clean, stage_prefix="evaluate_vanilla")
            print(f"  {fam}-s {dataset}: vanilla {seeds_text(van)} -> fft_vqa {seeds_text(vqa)}")
    show(
        "H7: FFT w/ D_VQA against FFT w/ D_mixed (Table 5)",
        t5,
        [(f, "fft_vqa", d, c, "accuracy") for f in FAMILIES for d, c in (("colors", "none"), ("creatures", "rp"))],
    )
    show(
        "H8: truthful hint (Table 5)",
        t5,
        [(f, "vanilla", d, c, "accuracy") for f in FAMILIES for d, c in (("colors", "none"), ("colors", "th"), ("arithmetic", "th"))],
    )
    show("Table 10: VQA Overall, free-form (against Vanilla)", tables["table10"], [(f, m, d, "none", "vqa_accuracy") for f in FAMILIES for m, d in (("vanilla", "vqa_overall"), ("ours", "vqa_overall"), ("adv", "vqa_overall"), ("fft_vqa", "counting"))])
    show(
        "Table 9: colours under UF with the CoT prompt (against Vanilla)",
        tables["table9"],
        [(f, m, "colors", "uf", "accuracy") for f in FAMILIES for m in ("vanilla", "vanilla_cot", "ours")],
    )
    figure5 = tables["figure5"]
    show(
        "Figure 5: VQA Overall by K (against K = 2)",
        figure5,
        [
            (model[: -len("-s")], method, "vqa_overall", "none", "accuracy")
            for model in sorted({r["model"] for r in figure5})
            for method in sorted({r["method"] for r in figure5})
        ],
    )


if __name__ == "__main__":
    main(sys.argv[1])
