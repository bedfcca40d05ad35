"""A stand-in trainer: a seeded nearest-word 'model' with a made-up accuracy."""
import argparse
import csv
import json
import random

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
with open(args.data, newline="") as f:
    rows = list(csv.DictReader(f))
rng = random.Random(args.seed)
weights = {word: rng.uniform(-1, 1) * args.lr for row in rows for word in row["text"].split()}
correct = sum((sum(weights[w] for w in row["text"].split()) > 0) == (row["label"] == "1") for row in rows)
with open(args.out, "w") as f:
    json.dump({"lr": args.lr, "seed": args.seed, "accuracy": correct / max(len(rows), 1)}, f)
