//! Data stage kinds through the binary: the embedded benchmark.

use crate::Project;

const SYNTH: &str = r#"version: 1
stages:
  world:
    kind: synth
    params: {seed: 3, train_per_set: 20, test_per_set: 10, instruct_items: 10, pretrain_captions: 30}
    materialize: {items: items.parquet, corpus: corpus.parquet}
  conditions:
    kind: perturb
    inputs: {items: world.items}
    params: {seed: 3}
    materialize: {items: perturbed.parquet}
"#;

#[test]
fn synth_is_byte_identical_for_the_same_seed_and_thread_count() {
    let one = Project::new();
    one.write("mipipe.yaml", SYNTH);
    one.mipipe(&["run"]).expect_code(0);
    let two = Project::new();
    two.write("mipipe.yaml", SYNTH);
    // A different number of rayon threads must not change a byte.
    let run = two
        .command(&["run"])
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(run.status.success());
    for file in ["items.parquet", "corpus.parquet", "perturbed.parquet"] {
        let a = std::fs::read(one.path().join(file)).unwrap();
        let b = std::fs::read(two.path().join(file)).unwrap();
        assert!(a.len() > 1000, "{file} is suspiciously small");
        assert!(a == b, "{file} differs between runs");
    }
    let other = Project::new();
    other.write("mipipe.yaml", &SYNTH.replace("seed: 3", "seed: 4"));
    other.mipipe(&["run"]).expect_code(0);
    assert_ne!(
        std::fs::read(one.path().join("items.parquet")).unwrap(),
        std::fs::read(other.path().join("items.parquet")).unwrap()
    );
}

#[test]
fn the_unified_table_opens_in_pyarrow_with_the_documented_schema() {
    let Some(python) = std::env::var_os("MIPIPE_TEST_PYTHON") else {
        assert!(
            std::env::var_os("MIPIPE_REQUIRE_PYTHON").is_none(),
            "scripts/test.sh sets MIPIPE_TEST_PYTHON to a Python with pyarrow"
        );
        eprintln!("skipped: MIPIPE_TEST_PYTHON (a Python with pyarrow) is not set");
        return;
    };
    let project = Project::new();
    project.write("mipipe.yaml", SYNTH);
    project.mipipe(&["run"]).expect_code(0);
    let script = r#"
import sys, pyarrow.parquet as pq
t = pq.read_table("items.parquet")
s = t.schema
expected = {
    "id": "string", "dataset": "string", "task": "string", "split": "string",
    "image": "binary", "question": "string", "options": "list<item: string>",
    "answer": "int32", "perturbation": "string", "origin_id": "string",
    "facts": "list<item: string>", "meta": "string",
}
got = {f.name: str(f.type) for f in s}
assert got == expected, got
rows = t.to_pylist()
assert sorted({r["task"] for r in rows}) == ["image_heavy", "text_heavy", "vqa"]
assert all(0 <= r["answer"] < len(r["options"]) for r in rows)
assert all(r["image"] is None for r in rows if r["task"] == "text_heavy")
assert all(r["image"][:8] == b"\x89PNG\r\n\x1a\n" for r in rows if r["task"] != "text_heavy")
c = pq.read_table("corpus.parquet")
assert c.schema.names == ["id", "image", "text"], c.schema.names
p = pq.read_table("perturbed.parquet")
assert p.schema == t.schema
counts = {}
for r in p.to_pylist():
    counts[(r["task"], r["perturbation"])] = counts.get((r["task"], r["perturbation"]), 0) + 1
expected_counts = {("image_heavy", c): 60 for c in ("none", "uf", "md")}
expected_counts.update({("text_heavy", c): 60 for c in ("rp", "ri", "fb", "fw")})
expected_counts[("vqa", "none")] = 40
assert counts == expected_counts, counts
print(len(rows), "rows ok")
"#;
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .current_dir(project.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 4 image-/text-heavy sets x 30 + 3 VQA sets x 10 + 10 instruct items.
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("160 rows ok"));
}
