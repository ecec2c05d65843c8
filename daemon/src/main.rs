//! `coalitiond`: see `coalitiond --help`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = coalitiond::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(coalitiond::cli::run(cli))
}
