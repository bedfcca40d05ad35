//! Gives every binary and test that links this crate an rpath to libtorch's folder, so nothing
//! needs LD_LIBRARY_PATH. torch-sys exports the folder as `DEP_TCH_LIBTORCH_LIB`, visible only to
//! crates that depend on torch-sys directly (hence the direct dependency).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
