//! The edgefleet hub's REST API (`/api/v1`) as Rust: the types the hub
//! serialises ([`types`]), a client that decodes them ([`client`]), and
//! the text views `edgectl` and `cloudcore demo` print ([`text`]).
//!
//! The hub (`cloudcore`) depends on this crate for its types only; edgectl
//! and other clients never link the hub.

pub mod client;
pub mod sources;
pub mod text;
pub mod types;

pub use client::{Client, ClientError};
pub use sources::*;
pub use types::*;
