"""The numbers docs/results/README.md quotes besides the tables, read from the cache of a run of
pipelines/ablation.yaml (or pipelines/sensitivity.yaml): chance level per set (multiple choice,
and free-form: distinct answers and the majority-answer share), the scale terms of the training logs (RMS of the
embeddings, ||delta||/||e||, ||noise||/||e||), L_adv against L_sup, and the consistency term's
weighted share of the loss.

    python docs/results/facts.py [pipelines/ablation.yaml]   # needs pyarrow

Prints JSON lines. Reads the lockfile beside the pipeline (`ablation.lock`) and the objects it
names, in the cache mipipe uses: `$MIPIPE_CACHE_DIR` where it is set (as `--cache-dir`), else
`.mipipe` beside the pipeline.
"""

import json
import os
import statistics
import sys

import pyarrow.parquet as pq

pipeline = sys.argv[1] if len(sys.argv) > 1 else "pipelines/ablation.yaml"
root = os.path.dirname(pipeline)
lock = json.load(open(os.path.splitext(pipeline)[0] + ".lock"))["stages"]
cache = os.environ.get("MIPIPE_CACHE_DIR") or os.path.join(root, ".mipipe")


def object_path(stage, output):
    entry = lock[stage]["outputs"][output]
    digest = entry["digest"]
    if entry["kind"] == "dir":
        return os.path.join(cache, "trees/v1", digest)
    return os.path.join(cache, "objects/v1", digest[:2], digest[2:])


def emit(**fields):
    print(json.dumps(fields))


# Chance level per test set: the mean of 1/options over its clean test items.
items = pq.read_table(object_path("world", "items")).to_pylist()
by_set = {}
for item in items:
    if item["split"] == "test":
        by_set.setdefault(item["dataset"], []).append(1 / len(item["options"]))
for dataset, inverse in sorted(by_set.items()):
    counts = sorted({round(1 / x) for x in inverse})
    emit(fact="chance", dataset=dataset, chance=round(statistics.mean(inverse), 4),
         options=counts, n=len(inverse))

# Free-form chance (Table 10): per set, how many distinct gold answers its clean test items
# have (an answer drawn uniformly from them is right 1/k of the time) and the share of the most
# frequent one (the majority-answer baseline).
golds = {}
for item in items:
    if item["split"] == "test":
        golds.setdefault(item["dataset"], []).append(item["options"][item["answer"]])
for dataset, answers in sorted(golds.items()):
    top = max(set(answers), key=answers.count)
    emit(fact="free_form_chance", dataset=dataset, distinct_answers=len(set(answers)),
         uniform=round(1 / len(set(answers)), 4), majority_answer=top,
         majority_share=round(answers.count(top) / len(answers), 4), n=len(answers))


def weight(params):
    """λ of the divergence a fine-tune's method uses (KL for `kl`, JS for `js`, Ours's own)."""
    consistency = params.get("consistency", {})
    method = params.get("method")
    divergence = "kl" if method == "kl" else consistency.get("ours_divergence", "js") if method == "ours" else "js"
    return consistency.get(divergence + "_weight", 0.01)


def median(rows, column):
    values = [r[column] for r in rows if r.get(column) is not None]
    return round(statistics.median(values), 5) if values else None


for stage in sorted(lock):
    if not (stage.startswith("pretrain[") or stage.startswith("finetune[")):
        continue
    log = pq.read_table(object_path(stage, "log")).to_pylist()
    first, last = log[0], log[-1]
    fact = dict(fact="train_log", stage=stage, steps=len(log),
                text_rms_first=round(first["text_rms"], 5), text_rms_last=round(last["text_rms"], 5),
                image_rms_first=round(first["image_rms"], 5), image_rms_last=round(last["image_rms"], 5),
                sup_median=median(log, "sup"))
    for column in ["adv", "rg", "delta_to_text", "delta_to_image", "noise_to_text",
                   "noise_to_image", "pgd_step_to_epsilon", "consistency"]:
        value = median(log, column)
        if value is not None:
            fact[column + "_median"] = value
    if fact.get("consistency_median") is not None:
        lam = weight(lock[stage]["params"])
        fact["lambda"] = lam
        shares = [lam * r["consistency"] / r["loss"] for r in log
                  if r.get("consistency") is not None and r["loss"] > 0]
        fact["weighted_consistency_share_median"] = round(statistics.median(shares), 6)
    if fact.get("adv_median") is not None:
        gaps = [r["adv"] - r["sup"] for r in log if r.get("adv") is not None]
        fact["adv_minus_sup_median"] = round(statistics.median(gaps), 5)
    emit(**fact)
