//! The `portvakt` binary as the end-to-end tests run it: the same allocator and the same
//! entry point as `gateway/src/main.rs`. Cargo builds a package's own binaries before its
//! integration tests (and hands their paths over in `CARGO_BIN_EXE_*`), so it lives here,
//! under another name than the gateway's `portvakt`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
