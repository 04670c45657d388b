//! Calendar time in UTC from Unix time, for the names and lines people
//! read (backup archive names, dates in reports); no time-zone database.

/// A moment in UTC, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Utc {
    /// The moment `ms` milliseconds after the Unix epoch.
    pub fn from_unix_ms(ms: u64) -> Self {
        let secs = ms / 1000;
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        // Civil-from-days, proleptic Gregorian (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Self {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// `2026-11-30`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_moments() {
        let t = Utc::from_unix_ms(1_796_048_435_000);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2026, 11, 30, 14, 20, 35)
        );
        assert_eq!(t.date(), "2026-11-30");
        assert_eq!(Utc::from_unix_ms(0).date(), "1970-01-01");
        // A leap day, one second before midnight.
        let t = Utc::from_unix_ms(1_709_251_199_000);
        assert_eq!((t.date(), t.hour, t.second), ("2024-02-29".into(), 23, 59));
    }
}
