#!/usr/bin/env python3
"""Data-stage throughput: mipipe `convert` and `perturb` against plain Python (PIL + pyarrow).

Conversion: an ImageNet-style folder of N JPEG images (C classes) to the unified
multiple-choice table: decode each JPEG, re-encode as RGB PNG, draw distractors and the gold
position, write Parquet. Perturbation: the embedded benchmark's table to every default
condition (image-heavy: none/UF/MD; text-heavy: RP/RI/FB/FW noise and canvases as PNG; VQA
clean). Both sides do the same work; the Python side is the straightforward single-process
script a researcher would write. Wall-clock seconds, median of 3, mipipe with a fresh cache each
time (so it really runs) on all cores.

Usage: python3 bench/data.py [--images 3000] [--size 160]
Installs Pillow, pyarrow and numpy into ~/.cache/mipipe/test-venv when missing.
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
VENV = Path(os.environ.get("MIPIPE_TOOLS", Path.home() / ".cache" / "mipipe")) / "test-venv"
PY = VENV / "bin" / "python"

PYTHON_CONVERT = r'''
import io, os, random, sys
import pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
root, out = sys.argv[1], sys.argv[2]
classes = sorted(os.listdir(root))
rows = {k: [] for k in ["id", "dataset", "task", "split", "image", "question", "options", "answer", "perturbation", "origin_id"]}
for cls in classes:
    for name in sorted(os.listdir(os.path.join(root, cls))):
        rel = f"{cls}/{name}"
        img = Image.open(os.path.join(root, rel)).convert("RGB")
        buf = io.BytesIO(); img.save(buf, "PNG")
        rng = random.Random(rel)
        options = rng.sample([c for c in classes if c != cls], 3)
        slot = rng.randrange(4); options.insert(slot, cls)
        for k, v in [("id", "d/" + rel), ("dataset", "d"), ("task", "image_heavy"), ("split", "test"), ("image", buf.getvalue()),
                     ("question", "What type of object is in this photo?"), ("options", options), ("answer", slot),
                     ("perturbation", "none"), ("origin_id", "d/" + rel)]:
            rows[k].append(v)
pq.write_table(pa.table(rows), out, compression="snappy")
print(len(rows["id"]))
'''

PYTHON_PERTURB = r'''
import io, random, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
table = pq.read_table(sys.argv[1]).to_pylist()
out = sys.argv[2]
facts = ["Water boils at 100 degrees Celsius at sea level.", "The Moon is made mostly of cheese.", "Zero is an even number."] * 10
pool = sorted((r["id"], r["image"]) for r in table if r["task"] == "image_heavy")
def png(array):
    buf = io.BytesIO(); Image.fromarray(array, "RGB").save(buf, "PNG"); return buf.getvalue()
size = 32
rows = []
for r in table:
    rng = random.Random(r["id"])
    if r["task"] == "image_heavy":
        conds = ["none", "uf", "md"]
    elif r["task"] == "text_heavy":
        conds = ["rp", "ri", "fb", "fw"]
    else:
        conds = ["none"]
    for c in conds:
        row = dict(r)
        if c != "none":
            row["id"] = f'{r["id"]}#{c}'; row["perturbation"] = c
        if c == "uf":
            row["question"] = " ".join(rng.choice(facts) for _ in range(10)) + " " + r["question"]
        elif c == "md":
            wrong = rng.choice([i for i in range(len(r["options"])) if i != r["answer"]])
            row["question"] = f'The picture seems to describe a {r["options"][wrong]}. ' + r["question"]
        elif c == "rp":
            row["image"] = png(np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size, size, 3), dtype=np.uint8))
        elif c == "ri":
            row["image"] = rng.choice(pool)[1]
        elif c == "fb":
            row["image"] = png(np.zeros((size, size, 3), np.uint8))
        elif c == "fw":
            row["image"] = png(np.full((size, size, 3), 255, np.uint8))
        rows.append(row)
pq.write_table(pa.Table.from_pylist(rows), out, compression="snappy")
print(len(rows))
'''


def sh(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode:
        raise SystemExit(f"failed: {cmd}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def timed(fn, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results-data.json"))
    args = parser.parse_args()
    if not PY.exists() or subprocess.run([str(PY), "-c", "import PIL, pyarrow, numpy"]).returncode:
        sh([sys.executable, "-m", "venv", str(VENV)])
        sh([str(VENV / "bin" / "pip"), "install", "-q", "pillow", "pyarrow", "numpy"])
    sh(["cargo", "build", "--release", "--quiet", "--bin", "mipipe"], cwd=ROOT)
    mipipe = str(ROOT / "target" / "release" / "mipipe")
    env = dict(os.environ, MIPIPE_NO_PROGRESS="1")
    results = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # A folder of JPEGs, drawn with PIL.
        make = (
            "import os, random, sys\nfrom PIL import Image, ImageDraw\n"
            "root, n, c, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])\n"
            "for i in range(n):\n"
            "    d = os.path.join(root, f'class_{i % c:03d}'); os.makedirs(d, exist_ok=True)\n"
            "    r = random.Random(i); img = Image.new('RGB', (s, s), tuple(r.randrange(256) for _ in range(3)))\n"
            "    dr = ImageDraw.Draw(img)\n"
            "    for _ in range(6):\n"
            "        x, y = r.randrange(s), r.randrange(s)\n"
            "        dr.ellipse([x, y, x + 5 + r.randrange(40), y + 5 + r.randrange(40)], fill=tuple(r.randrange(256) for _ in range(3)))\n"
            "    img.save(os.path.join(d, f'img_{i:06d}.jpg'), quality=90)\n"
        )
        sh([str(PY), "-c", make, str(tmp / "images"), str(args.images), str(args.classes), str(args.size)])
        (tmp / "mipipe.yaml").write_text(
            "version: 1\nstages:\n"
            "  convert:\n    kind: convert\n    params: {format: imagenet_folders, path: images}\n"
            "  world:\n    kind: synth\n    params: {seed: 1, train_per_set: 1000, test_per_set: 500, instruct_items: 500, pretrain_captions: 10}\n"
            "  perturb:\n    kind: perturb\n    inputs: {items: world.items}\n    params: {seed: 1}\n"
        )
        sh([mipipe, "run", "--target", "world"], cwd=tmp, env=env)
        world_items = next(p for p in (tmp / ".mipipe" / "objects" / "v1").rglob("*")
                           if p.is_file() and p.stat().st_size > 100000 and b"question" in p.read_bytes()[-4000:])
        n_world = int(sh([str(PY), "-c", "import pyarrow.parquet as pq,sys; print(pq.read_metadata(sys.argv[1]).num_rows)", str(world_items)]))

        def run_stage(stage):
            sh([mipipe, "run", "--target", stage, "--force", stage], cwd=tmp, env=env)

        ours_convert = timed(lambda: run_stage("convert"))
        theirs_convert = timed(lambda: sh([str(PY), "-c", PYTHON_CONVERT, str(tmp / "images"), str(tmp / "py.parquet")]))
        ours_perturb = timed(lambda: run_stage("perturb"))
        theirs_perturb = timed(lambda: sh([str(PY), "-c", PYTHON_PERTURB, str(world_items), str(tmp / "py2.parquet")]))
        out_rows = int(sh([str(PY), "-c", PYTHON_PERTURB, str(world_items), str(tmp / "py2.parquet")]))
    results["convert"] = {"items": args.images, "image_size": args.size, "mipipe_s": ours_convert, "python_s": theirs_convert,
                          "mipipe_items_per_s": args.images / ours_convert, "python_items_per_s": args.images / theirs_convert}
    results["perturb"] = {"input_items": n_world, "output_rows": out_rows, "mipipe_s": ours_perturb, "python_s": theirs_perturb,
                          "mipipe_items_per_s": n_world / ours_perturb, "python_items_per_s": n_world / theirs_perturb}
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
