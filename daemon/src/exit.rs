//! Process exit codes of both daemons and their tools, named once (the
//! sysexits values). The systemd units list [`CONFIG`] in
//! `RestartPreventExitStatus=`, so bad configuration stops the restart loop
//! instead of spinning.

/// Success.
pub const OK: i32 = 0;
/// A runtime failure, or a check found a FAIL line.
pub const FAILURE: i32 = 1;
/// Bad command line (clap's own code for usage errors).
pub const USAGE: i32 = 2;
/// The hub or broker is unreachable or refused; a listener could not bind;
/// a critical task died (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// The data directory or store cannot be created or opened (EX_CANTCREAT).
pub const STORE: i32 = 73;
/// Invalid or missing configuration, not enrolled, or the data directory is
/// in use by another process (EX_CONFIG).
pub const CONFIG: i32 = 78;
