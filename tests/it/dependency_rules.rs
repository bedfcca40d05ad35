//! The crate dependency rules of DESIGN.md §2, read from `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};

fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let members: BTreeSet<String> = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    let mut deps = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        if !members.contains(package["id"].as_str().unwrap()) {
            continue;
        }
        let names = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        deps.insert(package["name"].as_str().unwrap().to_string(), names);
    }
    deps
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
    let deps = workspace_dependencies();
    assert!(deps.contains_key("mipipe-cache") && deps.contains_key("mipipe-engine"));
    // 1. cache depends on no other mipipe crate.
    let cache_deps: Vec<_> = deps["mipipe-cache"]
        .iter()
        .filter(|d| d.starts_with("mipipe"))
        .collect();
    assert!(
        cache_deps.is_empty(),
        "mipipe-cache depends on {cache_deps:?}"
    );
    // 2. engine depends only on cache among mipipe crates, and never on tch, clap or a terminal.
    for dep in &deps["mipipe-engine"] {
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
        for dep in &deps[*name] {
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
            !list.iter().any(|d| is_stage_crate(d)),
            "{name} depends on a stage crate"
        );
    }
    // 4. only the binary names every stage crate, except the torch one: the binary registers
    //    its kinds' declarations (`mipipe-stage-torch-types`) and never links libtorch; the
    //    torch crate's own executable runs them.
    for (name, list) in &deps {
        if name == "mipipe" {
            for stage in &stage_crates {
                if *stage == "mipipe-stage-torch" {
                    assert!(!list.contains(*stage), "the binary must not link libtorch");
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
        !deps["mipipe-stage-torch-types"]
            .iter()
            .any(|d| d == "tch" || d == "torch-sys"),
        "the kinds' declarations must not reach libtorch"
    );
    // 5. tch only from the torch stage crate.
    for (name, list) in &deps {
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
