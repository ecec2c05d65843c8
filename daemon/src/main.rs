//! `coalitiond`: see `coalitiond --help`.

use clap::Parser;

/// Rust's allocations (rows decoded, requests, answers) freed in bulk after each batch made
/// glibc's malloc consolidate its free lists on the writer's thread; mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Before any thread or connection: SQLite's allocations through mimalloc too.
    if !coalitiond::store::sqlite_alloc::use_daemon_allocator() {
        eprintln!("warning: SQLite keeps its own allocator (it had started before main)");
    }
    let cli = coalitiond::cmd::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(coalitiond::cmd::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A status from the daemon: its code and message, not its encoded details.
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
