//! Gives libcifar.so its soname, `libcifar.so.<ABI version>` (keep in step with
//! `CIFAR_ABI_VERSION` in src/lib.rs; a test checks), so that a program linked against
//! one ABI version never loads a library of another.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcifar.so.1");
    println!("cargo:rerun-if-changed=build.rs");
}
