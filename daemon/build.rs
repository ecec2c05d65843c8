//! `sqlx::migrate!` embeds the migrations when the crate compiles: rebuild when one is added or
//! changed (without this, an incremental build keeps the old set and a new migration never runs).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
