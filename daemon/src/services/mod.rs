//! The services: the rules of each request, below the gRPC handlers and above the store. A
//! handler maps wire types in and out; what a request may do, and how, is decided here.

pub mod clearing;
pub mod error;
pub mod feed;
pub mod holds;
pub mod registry;
pub mod shared;
pub mod validate;
pub mod webhooks;
pub mod writes;
