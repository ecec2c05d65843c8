//! Who is calling: the authenticated partner the identity layer puts in a request's extensions,
//! and the caller's name while its call runs (what refusals are counted by).

/// The authenticated partner of a call, put in the request extensions by the identity layer.
/// Handlers take the caller only from here, never from a request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerPartner(pub String);

tokio::task_local! {
    /// The caller's name (partner id, or the role/name of staff; `-` if none) while its call
    /// runs: set by `server::observe`, read where a refusal is counted.
    pub static CALLER: String;
}
