use clap::Args;
/// Bench arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {}
/// Runs the bench.
pub async fn run(_a: BenchArgs) -> anyhow::Result<()> { Ok(()) }
