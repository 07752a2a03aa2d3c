//! Helpers shared by the integration tests and benchmarks: meshes of in-process nodes (the
//! library's own [`LocalMesh`]), meshes of `klf` processes, and waiting for a condition with a
//! deadline (never a fixed sleep).

pub mod floor;
pub mod model_server;
pub mod processes;

pub use klf_actors::{LocalMesh, LocalMesh as InProcessMesh, wait_until};

/// Writes a package folder under `dir` (a `klf.toml` with `name`, `version`, a `type`, and the
/// `extra` manifest lines, plus `main.js` holding `source`) and loads it.
pub fn write_package(
    dir: &std::path::Path,
    name: &str,
    version: &str,
    extra: &str,
    source: &str,
) -> klf_actors::functions::package::Package {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let folder = dir.join(format!("{name}-{version}-{n}"));
    std::fs::create_dir_all(&folder).unwrap_or_else(|e| panic!("create {}: {e}", folder.display()));
    let manifest =
        format!("name = \"{name}\"\nversion = \"{version}\"\ntype = \"test\"\n{extra}\n");
    std::fs::write(folder.join("klf.toml"), manifest)
        .unwrap_or_else(|e| panic!("write manifest: {e}"));
    std::fs::write(folder.join("main.js"), source).unwrap_or_else(|e| panic!("write source: {e}"));
    klf_actors::functions::package::Package::load(&folder)
        .unwrap_or_else(|e| panic!("package {name}: {e}"))
}

/// The folder of one of the repository's `examples/` packages.
pub fn example_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// The same folder as text, for `klf fn deploy` arguments.
pub fn example_arg(name: &str) -> String {
    example_dir(name).to_string_lossy().into_owned()
}

/// A package from one of the repository's `examples/` folders.
pub fn example_package(name: &str) -> klf_actors::functions::package::Package {
    klf_actors::functions::package::Package::load(&example_dir(name))
        .unwrap_or_else(|e| panic!("example {name}: {e}"))
}
