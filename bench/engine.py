#!/usr/bin/env python3
"""Engine benchmark: mipipe vs DVC vs Snakemake on generated fan-out/fan-in pipelines.

For N = 10, 100, 1000 stages (one source, N-2 middle stages reading it, one sink reading every
middle stage), each tool runs the same trivial shell commands. Measured, side by side in one
run: full run, no-op rerun, rerun after changing one middle stage's param, and status.
Also: blake3 hashing of a large file by mipipe against `b3sum` on the same file.

Usage: python3 bench/engine.py [--sizes 10,100,1000] [--dvc-max 100] [--out bench/RESULTS.md]
Peers are installed from PyPI into ~/.cache/mipipe/bench-venv (dvc, snakemake) and b3sum with
`cargo install` into ~/.cache/mipipe/bin, when missing.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MIPIPE_TOOLS", Path.home() / ".cache" / "mipipe"))
VENV = CACHE / "bench-venv"


def sh(cmd, cwd=None, env=None, check=True):
    result = subprocess.run(cmd, cwd=cwd, env=env, shell=isinstance(cmd, str),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}): {cmd}\n{result.stdout}\n{result.stderr}")
    return result


def timed(cmd, cwd, env=None, repeat=1):
    """Median wall-clock seconds of `repeat` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        sh(cmd, cwd=cwd, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ensure_peers():
    if not (VENV / "bin" / "dvc").exists() or not (VENV / "bin" / "snakemake").exists():
        print("installing dvc and snakemake into", VENV, file=sys.stderr)
        sh([sys.executable, "-m", "venv", str(VENV)])
        sh([str(VENV / "bin" / "pip"), "install", "-q", "dvc", "snakemake"])
    b3sum = shutil.which("b3sum") or str(CACHE / "bin" / "b3sum")
    if not Path(b3sum).exists():
        print("installing b3sum with cargo", file=sys.stderr)
        sh(["cargo", "install", "--quiet", "--root", str(CACHE), "b3sum"])
    return b3sum


def build_mipipe():
    sh(["cargo", "build", "--release", "--quiet", "--bin", "mipipe"], cwd=ROOT)
    return str(ROOT / "target" / "release" / "mipipe")


def middle_cmd(i, value):
    return f"cat src.txt > m{i}.txt && echo {value} >> m{i}.txt"


# --- mipipe -----------------------------------------------------------------------------
def write_mipipe(dir, n, changed=None):
    lines = ["version: 1", "stages:", "  src:", "    kind: command", "    params:",
             "      cmd: echo source > ${outs.o}", "      outs: {o: src.txt}"]
    for i in range(n - 2):
        value = "changed" if i == changed else i
        lines += [f"  m{i}:", "    kind: command", "    inputs: {s: src.o}", "    params:",
                  "      cmd: cat ${inputs.s} > ${outs.o} && echo ${params.value} >> ${outs.o}",
                  f"      value: {value}", "      outs: {o: m.txt}"]
    refs = ", ".join(f"m{i}.o" for i in range(n - 2))
    lines += ["  sink:", "    kind: command", f"    inputs: {{all: [{refs}]}}", "    params:",
              "      cmd: cat ${inputs.all} | wc -l > ${outs.o}", "      outs: {o: sink.txt}"]
    (dir / "mipipe.yaml").write_text("\n".join(lines) + "\n")


def bench_mipipe(mipipe, dir, n):
    write_mipipe(dir, n)
    env = dict(os.environ, MIPIPE_NO_PROGRESS="1", NO_COLOR="1")
    out = {"full": timed([mipipe, "run", "-j", "2"], dir, env)}
    out["noop"] = timed([mipipe, "run", "-j", "2"], dir, env, repeat=5)
    out["status"] = timed([mipipe, "status"], dir, env, repeat=5)
    # The full resolve-and-plan path, which the up-to-date memo lets no-op runs skip.
    out["plan"] = timed([mipipe, "run", "--dry-run"], dir, env, repeat=5)
    write_mipipe(dir, n, changed=0)
    out["one_param"] = timed([mipipe, "run", "-j", "2"], dir, env)
    return out


# --- DVC --------------------------------------------------------------------------------
def write_dvc(dir, n, changed=None):
    params = {f"m{i}": ("changed" if i == changed else i) for i in range(n - 2)}
    (dir / "params.yaml").write_text("".join(f"m{i}: {v}\n" for i, v in enumerate(params.values())))
    stages = {"src": {"cmd": "echo source > src.txt", "outs": ["src.txt"]}}
    for i in range(n - 2):
        stages[f"m{i}"] = {"cmd": f"cat src.txt > m{i}.txt && echo ${{m{i}}} >> m{i}.txt",
                           "deps": ["src.txt"], "params": [f"m{i}"], "outs": [f"m{i}.txt"]}
    stages["sink"] = {"cmd": "cat " + " ".join(f"m{i}.txt" for i in range(n - 2)) + " | wc -l > sink.txt",
                      "deps": [f"m{i}.txt" for i in range(n - 2)], "outs": ["sink.txt"]}
    (dir / "dvc.yaml").write_text(json.dumps({"stages": stages}, indent=1))


def bench_dvc(dir, n):
    dvc = str(VENV / "bin" / "dvc")
    sh([dvc, "init", "--no-scm", "-q"], cwd=dir)
    sh([dvc, "config", "core.analytics", "false"], cwd=dir)
    write_dvc(dir, n)
    out = {"full": timed([dvc, "repro", "-q"], dir)}
    out["noop"] = timed([dvc, "repro", "-q"], dir, repeat=3)
    # `dvc status -q` exits 1 when something changed; nothing has here, but do not fail on it.
    out["status"] = timed(f"{dvc} status -q || true", dir, repeat=3)
    write_dvc(dir, n, changed=0)
    out["one_param"] = timed([dvc, "repro", "-q"], dir)
    return out


# --- Snakemake --------------------------------------------------------------------------
def write_snakemake(dir, n, changed=None):
    values = {i: ("changed" if i == changed else i) for i in range(n - 2)}
    lines = [f"VALUES = {json.dumps({str(k): str(v) for k, v in values.items()})}",
             "rule sink:", f"    input: expand('m{{i}}.txt', i=range({n - 2}))", "    output: 'sink.txt'",
             "    shell: 'cat {input} | wc -l > {output}'",
             "rule src:", "    output: 'src.txt'", "    shell: 'echo source > {output}'",
             "rule middle:", "    input: 'src.txt'", "    output: 'm{i}.txt'",
             "    params: value=lambda w: VALUES[w.i]",
             "    shell: 'cat {input} > {output} && echo {params.value} >> {output}'"]
    (dir / "Snakefile").write_text("\n".join(lines) + "\n")


def bench_snakemake(dir, n):
    smk = str(VENV / "bin" / "snakemake")
    write_snakemake(dir, n)
    base = [smk, "-c2", "--quiet"]
    out = {"full": timed(base, dir)}
    out["noop"] = timed(base, dir, repeat=3)
    out["status"] = timed([smk, "-n", "--quiet"], dir, repeat=3)
    write_snakemake(dir, n, changed=0)
    out["one_param"] = timed(base, dir)
    return out


def bench_hash(mipipe, b3sum, size_mb):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.bin"
        with open(path, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(size_mb):
                f.write(chunk)
        sh([b3sum, str(path)])  # warm the page cache
        ours = timed([mipipe, "cache", "hash", str(path)], tmp, repeat=5)
        theirs = timed([b3sum, str(path)], tmp, repeat=5)
        a = sh([mipipe, "cache", "hash", str(path)]).stdout.split()[0]
        b = sh([b3sum, str(path)]).stdout.split()[0]
        assert a == b, f"digests differ: {a} vs {b}"
        return ours, theirs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--dvc-max", type=int, default=100, help="largest N for DVC (slow)")
    parser.add_argument("--hash-mb", type=int, default=1024, help="0 skips the hash benchmark")
    parser.add_argument("--tools", default="mipipe,snakemake,dvc")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results-engine.json"))
    args = parser.parse_args()
    b3sum = ensure_peers()
    mipipe = build_mipipe()
    results = {"sizes": {}, "machine": sh("nproc; free -g | head -2", check=False).stdout}
    for n in [int(s) for s in args.sizes.split(",")]:
        row = {}
        for name, fn in [("mipipe", lambda d: bench_mipipe(mipipe, d, n)),
                         ("snakemake", lambda d: bench_snakemake(d, n)),
                         ("dvc", lambda d: bench_dvc(d, n))]:
            if name not in args.tools.split(",") or (name == "dvc" and n > args.dvc_max):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                row[name] = fn(Path(tmp))
            print(f"N={n} {name}: {row[name]}", file=sys.stderr)
        results["sizes"][n] = row
    if args.hash_mb > 0:
        ours, theirs = bench_hash(mipipe, b3sum, args.hash_mb)
        results["hash"] = {"size_mb": args.hash_mb, "mipipe_s": ours, "b3sum_s": theirs}
        print(f"hash {args.hash_mb} MiB: mipipe {ours:.3f}s, b3sum {theirs:.3f}s", file=sys.stderr)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
