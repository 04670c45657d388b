//! Subcommands other than `run`: enrollment, the read-only status view and
//! the preflight check.

pub mod check;
pub mod enroll;
pub mod status;
