//! The `ekyc-gateway` binary: nothing but a call into the library's command line.

// mimalloc: per-thread free lists suit the thread-per-core data plane (measured in
// docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ekyc_gateway::cli::main()
}
