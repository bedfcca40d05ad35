"""The spread over training seeds of each method's difference from FFT w/ D_mixed: the
planning input of docs/embedded-benchmark.md §9b (how many seeds the study needs).

    python docs/results/seed_spread.py pipelines/ablation.lock CACHE_DIR   # needs pyarrow

Reads every `evaluate` stage's metrics named in the lockfile from the cache, takes for each
(family, method, dataset, condition, metric) the per-seed difference from `fft_mix` on the
seeds both have (at least three), and prints, per metric, the 25/50/75/90th percentiles of
the sample standard deviation of those differences, in points: over all methods, and over the
five regularisers alone. §9b quotes the three-seed run (the lockfile of docs/results/three-seeds/).
"""

import json
import os
import statistics
import sys

import pyarrow.parquet as pq

REGULARISERS = ("kl", "js", "rg", "adv", "ours")


def main(lock_path, cache):
    lock = json.load(open(lock_path))["stages"]
    value = {}
    for stage in lock.values():
        if stage["kind"] != "evaluate":
            continue
        digest = stage["outputs"]["metrics"]["digest"]
        path = os.path.join(cache, "objects/v1", digest[:2], digest[2:])
        for r in pq.read_table(path).to_pylist():
            key = (r["family"], r["method"], r["dataset"], r["condition"], r["metric"])
            value.setdefault(key, {})[r["seed"]] = 100 * r["value"]
    spreads = {}
    for (family, method, dataset, condition, metric), seeds in value.items():
        if method == "fft_mix" or metric not in ("accuracy", "causal_effect", "follow_rate"):
            continue
        reference = value.get((family, "fft_mix", dataset, condition, metric), {})
        differences = [seeds[s] - reference[s] for s in seeds if s in reference]
        if len(differences) >= 3:
            spreads.setdefault(metric, []).append((statistics.stdev(differences), method))
    for metric, rows in sorted(spreads.items()):
        for label, chosen in (("all methods", rows), ("regularisers", [r for r in rows if r[1] in REGULARISERS])):
            sds = sorted(sd for sd, _ in chosen)
            q = lambda p: sds[int(p * (len(sds) - 1))]
            print(
                f"{metric} ({label}, {len(sds)} differences): SD over seeds, percentiles "
                f"25/50/75/90: {q(.25):.2f} {q(.5):.2f} {q(.75):.2f} {q(.9):.2f} points"
            )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
