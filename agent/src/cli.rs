//! Subcommands other than `run`: enrollment, key rotation, the read-only
//! status view and the preflight check.

pub mod check;
pub mod enroll;
pub mod rotate;
pub mod status;
