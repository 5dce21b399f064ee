//! The `ekyc-gateway` binary: nothing but a call into the library's command line.

fn main() -> std::process::ExitCode {
    ekyc_gateway::cli::main()
}
