//! The shipped ingredients (`ingredients/`) are embedded with `include_dir!`, which does not tell
//! cargo about the files it reads: rebuild whenever anything under that folder changes.

fn main() {
    println!("cargo:rerun-if-changed=ingredients");
    println!("cargo:rerun-if-changed=build.rs");
}
