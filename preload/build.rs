//! Compiles the variadic exec hooks (`src/hooks/exec_variadic.c`) into the shim.

fn main() {
    println!("cargo:rerun-if-changed=src/hooks/exec_variadic.c");
    cc::Build::new()
        .file("src/hooks/exec_variadic.c")
        .flag_if_supported("-fvisibility=default")
        .warnings(true)
        .compile("weft_exec_variadic");
}
