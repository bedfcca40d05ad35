#!/usr/bin/env python3
"""No-op cost of the torch-enabled `mipipe` against the engine-only build (issue 3).

The default binary declares the libtorch kinds but never loads libtorch (they run in
`mipipe-torch-worker`). This measures, on the same fully cached pipeline, `mipipe run` (no-op),
`mipipe status` and `mipipe dag` with the default build and with `--no-default-features`
(no torch kinds at all), alternating the two, and reports medians and their ratio.

The engine-only build cannot load a pipeline with torch stages, so the pipeline is
pipelines/embedded-data.yaml plus, for the default build, pipelines/ablation.yaml.

Usage: python3 bench/noop_torch.py [--repeat 30]
Needs: `cargo build --release` done (the default binary); builds the engine-only one into
target/engine-only.
"""

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, cwd):
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{cmd} failed: {result.stderr}")
    return elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--no-default-features",
                    "--bin", "mipipe", "--target-dir", "target/engine-only"], cwd=ROOT, check=True)
    default = ROOT / "target/release/mipipe"
    engine_only = ROOT / "target/engine-only/release/mipipe"
    pipelines = ROOT / "pipelines"
    for binary in (default, engine_only):
        run([str(binary), "run", "embedded-data.yaml"], pipelines)
    run([str(default), "run", "ablation.yaml"], pipelines)
    results = {}
    cases = {
        "run (no-op), embedded-data.yaml": ["run", "embedded-data.yaml"],
        "status, embedded-data.yaml": ["status", "embedded-data.yaml"],
        "dag, embedded-data.yaml": ["dag", "embedded-data.yaml"],
    }
    for name, argv in cases.items():
        times = {"default": [], "engine-only": []}
        for _ in range(args.repeat):
            times["default"].append(run([str(default)] + argv, pipelines))
            times["engine-only"].append(run([str(engine_only)] + argv, pipelines))
        medians = {k: statistics.median(v) for k, v in times.items()}
        results[name] = {**medians, "ratio": medians["default"] / medians["engine-only"]}
    for name, argv in {
        "run (no-op), ablation.yaml": ["run", "ablation.yaml"],
        "status, ablation.yaml": ["status", "ablation.yaml"],
    }.items():
        times = [run([str(default)] + argv, pipelines) for _ in range(args.repeat)]
        results[name] = {"default": statistics.median(times)}
    print(json.dumps(results, indent=2))
    (ROOT / "bench/results-noop-torch.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
