//! The `portvakt` binary: everything it does is `gateway::cli`.

/// mimalloc rather than the system allocator: a proxied request allocates and frees many
/// small buffers (headers, the rewriter's tokens, body chunks), and glibc's malloc and free
/// were about a sixth of the instructions per request in the load test's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
