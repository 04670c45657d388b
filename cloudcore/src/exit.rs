//! Process exit codes, named in one place. systemd's
//! `RestartPreventExitStatus=78` stops a restart loop on bad config.

/// Bad configuration (sysexits EX_CONFIG).
pub const CONFIG: i32 = 78;
/// Could not open or create the data directory or store (EX_CANTCREAT).
pub const STORE: i32 = 73;
/// A listener could not bind or the broker failed (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// Any other fatal error.
pub const FAILURE: i32 = 1;
