//! The crate dependency rules of DESIGN.md §2, read from `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};

/// The workspace's crates: `(direct, reached)`, each crate name -> the names of the crates it
/// depends on directly, and of every crate it reaches through any path of normal
/// dependencies (from `cargo metadata`'s resolved graph).
#[allow(clippy::type_complexity)]
fn workspace_dependencies() -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, BTreeSet<String>>,
) {
    // The graph for the machine we build on (other platforms' crates may not be downloaded).
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &host,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let name_of: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    // id -> ids of its normal (not dev, not build) dependencies.
    let mut normal: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().unwrap() {
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap())
            .collect();
        normal.insert(node["id"].as_str().unwrap(), deps);
    }
    let mut direct = BTreeMap::new();
    let mut reached = BTreeMap::new();
    for member in metadata["workspace_members"].as_array().unwrap() {
        let id = member.as_str().unwrap();
        let name = name_of[id].to_string();
        direct.insert(
            name.clone(),
            normal[id].iter().map(|d| name_of[d].to_string()).collect(),
        );
        let mut seen = BTreeSet::new();
        let mut stack = normal[id].clone();
        while let Some(next) = stack.pop() {
            if seen.insert(next) {
                stack.extend(normal[next].iter().copied());
            }
        }
        reached.insert(name, seen.iter().map(|d| name_of[d].to_string()).collect());
    }
    (direct, reached)
}

/// Crates that implement stage kinds.
fn is_stage_crate(name: &str) -> bool {
    name.starts_with("mipipe-stage") && !is_stage_library(name)
}

/// Libraries shared by stage crates (table schemas, types): the one allowed kind of
/// dependency between stage crates.
fn is_stage_library(name: &str) -> bool {
    name.starts_with("mipipe-stage") && (name.ends_with("-schema") || name.ends_with("-types"))
}

#[test]
fn crate_dependency_rules_hold() {
    let (deps, reached) = workspace_dependencies();
    assert!(deps.contains_key("mipipe-cache") && deps.contains_key("mipipe-engine"));
    // 1. cache depends on no other mipipe crate.
    let cache_deps: Vec<_> = reached["mipipe-cache"]
        .iter()
        .filter(|d| d.starts_with("mipipe"))
        .collect();
    assert!(
        cache_deps.is_empty(),
        "mipipe-cache depends on {cache_deps:?}"
    );
    // 2. engine depends only on cache among mipipe crates, and never on tch, clap or a terminal.
    for dep in &reached["mipipe-engine"] {
        assert!(
            !dep.starts_with("mipipe") || dep == "mipipe-cache",
            "mipipe-engine depends on {dep}"
        );
        for forbidden in [
            "tch",
            "torch-sys",
            "clap",
            "indicatif",
            "console",
            "crossterm",
        ] {
            assert_ne!(
                dep, forbidden,
                "mipipe-engine must not depend on {forbidden}"
            );
        }
    }
    // 3. stage crates depend on the engine, not on each other (a `-schema`/`-types` crate is
    //    the allowed kind of library).
    let stage_crates: Vec<&String> = deps.keys().filter(|n| is_stage_crate(n)).collect();
    assert!(!stage_crates.is_empty());
    for name in &stage_crates {
        assert!(
            deps[*name].contains("mipipe-engine"),
            "{name} must implement the engine's Stage"
        );
        for dep in &reached[*name] {
            let library = dep.ends_with("-schema") || dep.ends_with("-types");
            assert!(
                !is_stage_crate(dep) || library,
                "{name} depends on stage crate {dep}"
            );
        }
    }
    // Executor crates (a scheduler backend) build on the engine and reach no stage crate.
    for (name, list) in deps
        .iter()
        .filter(|(n, _)| n.starts_with("mipipe-executor"))
    {
        assert!(
            list.contains("mipipe-engine"),
            "{name} must build on the engine"
        );
        assert!(
            !reached[name].iter().any(|d| is_stage_crate(d)),
            "{name} reaches a stage crate"
        );
    }
    // 4. only the binary names every stage crate, except the torch one: the binary registers
    //    its kinds' declarations (`mipipe-stage-torch-types`) and never links libtorch; the
    //    torch crate's own executable runs them.
    for (name, list) in &deps {
        if name == "mipipe" {
            for stage in &stage_crates {
                if *stage == "mipipe-stage-torch" {
                    assert!(
                        !reached[name].contains(*stage),
                        "the binary must not link libtorch"
                    );
                    assert!(list.contains("mipipe-stage-torch-types"));
                    continue;
                }
                assert!(
                    list.contains(*stage),
                    "the binary does not register {stage}"
                );
            }
        }
    }
    assert!(
        !reached["mipipe-stage-torch-types"]
            .iter()
            .any(|d| d == "tch" || d == "torch-sys"),
        "the kinds' declarations must not reach libtorch"
    );
    // 5. tch only from the torch stage crate: no other crate reaches it by any path.
    for (name, list) in &reached {
        if list.contains("tch") || list.contains("torch-sys") {
            assert_eq!(name, "mipipe-stage-torch", "{name} reaches libtorch");
        }
    }
}

/// `status`, `dag` and a no-op `run` must not pay libtorch's ~0.4 s and ~115 MB load: the
/// engine binary itself never links it (torch stages will run in worker processes).
#[test]
fn the_mipipe_binary_does_not_link_libtorch() {
    let out = std::process::Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_mipipe"))
        .output()
        .expect("ldd runs");
    let libraries = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{libraries}");
    assert!(
        !libraries.contains("libtorch") && !libraries.contains("libc10"),
        "{libraries}"
    );
}
