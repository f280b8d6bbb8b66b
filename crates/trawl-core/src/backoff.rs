use std::time::Duration;

/// How long to wait before retry number `attempt` of something that failed:
/// `base`, doubling with each attempt, never more than `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// A service that is away (a datastore, clamd, the blob store):
    /// 200 ms, doubling, at most 30 s.
    pub const SERVICE: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));

    pub const fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap }
    }

    /// The wait before retry `attempt` (1-based; 0 waits as 1 does).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_up_to_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let waits: Vec<u64> = (0..=7).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
        assert_eq!(Backoff::SERVICE.delay(1), Duration::from_millis(200));
        assert_eq!(
            Backoff::SERVICE.delay(9),
            Duration::from_millis(51_200).min(Duration::from_secs(30))
        );
    }
}
