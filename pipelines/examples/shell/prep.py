"""Lower-cases the first N rows of a CSV table."""
import argparse
import csv

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, required=True)
parser.add_argument("--src", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
with open(args.src, newline="") as f:
    rows = list(csv.DictReader(f))[: args.rows]
with open(args.out, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["id", "text", "label"])
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "text": row["text"].lower()})
