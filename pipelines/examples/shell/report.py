"""Writes a Markdown table of trained models."""
import json
import sys

args = sys.argv[1:]
out = args[args.index("--out") + 1]
models = [json.load(open(path)) for path in args[: args.index("--out")]]
with open(out, "w") as f:
    f.write("| lr | seed | accuracy |\n|---:|---:|---:|\n")
    for m in models:
        f.write(f"| {m['lr']} | {m['seed']} | {m['accuracy']:.3f} |\n")
