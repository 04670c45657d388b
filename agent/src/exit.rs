//! Process exit codes, named in one place. `edge-agent.service` lists
//! [`CONFIG`] in `RestartPreventExitStatus=` so a bad config stops the
//! restart loop instead of spinning.

/// Success.
pub const OK: i32 = 0;
/// A runtime failure, or `edge-agent check` found a FAIL line.
pub const FAILURE: i32 = 1;
/// Bad command line (clap's own code for usage errors).
pub const USAGE: i32 = 2;
/// Invalid or missing configuration, or the device is not enrolled
/// (sysexits EX_CONFIG).
pub const CONFIG: i32 = 78;
/// The state directory or store cannot be created or opened (EX_CANTCREAT).
pub const STORE: i32 = 73;
/// Enrollment was refused by the hub or the hub is unreachable (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
