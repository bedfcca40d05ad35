//! Data stage kinds through the binary: the embedded benchmark.

use crate::{Project, Run};

const SYNTH: &str = r#"version: 1
stages:
  world:
    kind: synth
    params: {seed: 3, train_per_set: 20, test_per_set: 10, instruct_items: 10, pretrain_captions: 30}
    materialize: {items: items.parquet, corpus: corpus.parquet, probe: probe.parquet}
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
    for file in [
        "items.parquet",
        "corpus.parquet",
        "probe.parquet",
        "perturbed.parquet",
    ] {
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
    let Some(python) = crate::python_with_pyarrow() else {
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
# Text-heavy items have a picture (the gold's sign or random pixels) on the train split only.
pictured = lambda r: r["task"] != "text_heavy" or r["split"] == "train"
assert all(r["image"] is None for r in rows if not pictured(r))
assert all(r["image"][:8] == b"\x89PNG\r\n\x1a\n" for r in rows if pictured(r))
probe = pq.read_table("probe.parquet")
assert probe.schema == t.schema
assert {r["dataset"] for r in probe.to_pylist()} == {"signs"} and probe.num_rows == 10
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

/// Writes the `synth` table again the way another tool would, then `perturb` reads it.
const REWRITE: &str = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
source, target, style = sys.argv[1], sys.argv[2], sys.argv[3]
t = pq.read_table(source)
def wider(field):
    ty = field.type
    if style == "pandas":      # pandas: large strings, int64
        if pa.types.is_string(ty): ty = pa.large_string()
        if pa.types.is_int32(ty): ty = pa.int64()
        if pa.types.is_list(ty) and pa.types.is_string(ty.value_type): ty = pa.large_list(pa.large_string())
        if pa.types.is_binary(ty): ty = pa.large_binary()
    if style == "broken" and field.name == "question": ty = pa.int64()
    return pa.field(field.name, ty, field.nullable)
if style == "broken":
    t = t.set_column(t.schema.get_field_index("question"), "question", pa.array(range(t.num_rows), pa.int64()))
else:
    t = t.cast(pa.schema([wider(f) for f in t.schema]))
compression = {"polars": "zstd", "pandas": "snappy", "gzip": "gzip", "lz4": "lz4", "brotli": "brotli", "broken": "snappy"}[style]
pq.write_table(t, target, compression=compression)
"#;

#[test]
fn tables_written_by_other_tools_are_read_and_a_wrong_type_is_named() {
    let Some(python) = crate::python_with_pyarrow() else {
        return;
    };
    for style in ["polars", "pandas", "gzip", "lz4", "brotli", "broken"] {
        let project = Project::new();
        project.write("rewrite.py", REWRITE);
        project.write(
            "mipipe.yaml",
            &format!(
                r#"version: 1
stages:
  world:
    kind: synth
    params: {{seed: 7, train_per_set: 2, test_per_set: 3}}
  other_tool:
    kind: command
    inputs: {{t: world.items}}
    params:
      cmd: '"$REWRITE_PYTHON" rewrite.py ${{inputs.t}} ${{outs.items}} {style}'
      deps: [rewrite.py]
      outs: {{items: items.parquet}}
  conditions:
    kind: perturb
    inputs: {{items: other_tool.items}}
    params: {{seed: 3}}
"#
            ),
        );
        let run = Run::from(
            project
                .command(&["run"])
                .env("REWRITE_PYTHON", &python)
                .output()
                .unwrap(),
        );
        if style == "broken" {
            run.expect_code(1);
            assert!(
                run.stderr
                    .contains("column `question` is Int64, expected Utf8"),
                "{}",
                run.stderr
            );
        } else {
            run.expect_code(0);
            assert!(
                run.stderr.contains("ran conditions"),
                "{style}: {}",
                run.stderr
            );
        }
    }
}

const SELECTED: &str = r#"version: 1
stages:
  world:
    kind: synth
    params: {seed: 3, train_per_set: 8, test_per_set: 4, instruct_items: 4, pretrain_captions: 10}
  conditions:
    kind: perturb
    inputs: {items: world.items}
  train_conditions:
    kind: select
    inputs: {items: conditions.items}
    params: {split: train}
  colours:
    kind: select
    inputs: {items: world.items}
    params: {split: test, datasets: [colors]}
  trainer:
    kind: command
    inputs: {rows: train_conditions.items}
    params:
      cmd: echo trained >> runs.log && cp ${inputs.rows} ${outs.model}
      outs: {model: model.bin}
"#;

#[test]
fn select_keeps_one_split_so_more_test_items_retrain_nothing() {
    let project = Project::new();
    project.write("mipipe.yaml", SELECTED);
    project.mipipe(&["run"]).expect_code(0);
    let all =
        mipipe_stage_schema::read_items(&project.output_object("conditions", "items")).unwrap();
    let train =
        mipipe_stage_schema::read_items(&project.output_object("train_conditions", "items"))
            .unwrap();
    let wanted: Vec<_> = all.iter().filter(|i| i.split == "train").cloned().collect();
    assert!(!wanted.is_empty() && wanted.len() < all.len());
    assert!(train == wanted, "the training rows, in their order");
    let colours =
        mipipe_stage_schema::read_items(&project.output_object("colours", "items")).unwrap();
    assert!(!colours.is_empty());
    assert!(colours
        .iter()
        .all(|i| i.split == "test" && i.dataset == "colors"));

    // More test rows: the data stages rerun, the selected training rows keep their bytes and
    // the stage that trains on them stays cached (early cutoff).
    project.write(
        "mipipe.yaml",
        &SELECTED.replace("test_per_set: 4", "test_per_set: 6"),
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    let ran = run.stages_with("ran");
    for stage in ["world", "conditions", "train_conditions", "colours"] {
        assert!(ran.iter().any(|s| s == stage), "{stage}: {}", run.stderr);
    }
    assert!(!ran.iter().any(|s| s == "trainer"), "{}", run.stderr);
    assert_eq!(project.read("runs.log"), "trained\n");

    // A misspelt split stops the run with the param named and the splits there are.
    project.write(
        "mipipe.yaml",
        &SELECTED.replace("{split: train}", "{split: trian}"),
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("`split`") && run.stderr.contains("test, train"),
        "{}",
        run.stderr
    );
}
