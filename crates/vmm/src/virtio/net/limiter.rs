//! Token buckets for a network device's rate limits, as Firecracker has them: one for bytes
//! and one for frames in each direction, each refilled continuously at `size` tokens per
//! `refill_ms`. A frame that would overdraw a bucket waits (it stays in the queue or the
//! TAP), and the device's timer fires when enough tokens are back.

use std::time::{Duration, Instant};

pub use crate::config::{Bucket, Limit};

struct Tokens {
    bucket: Bucket,
    tokens: u64,
    at: Instant,
}

impl Tokens {
    fn new(bucket: Bucket) -> Tokens {
        Tokens {
            bucket,
            tokens: bucket.size,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_nanos();
        let period = u128::from(self.bucket.refill_ms) * 1_000_000;
        let add = elapsed * u128::from(self.bucket.size) / period;
        if add > 0 {
            self.tokens = self.bucket.size.min(
                self.tokens
                    .saturating_add(u64::try_from(add).unwrap_or(u64::MAX)),
            );
            // Keep the remainder: advance only by the time the added tokens took.
            let used = add * period / u128::from(self.bucket.size);
            self.at += Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
            if self.tokens == self.bucket.size {
                self.at = now;
            }
        }
    }

    /// How long until `n` tokens are there (zero if they are). A frame larger than the
    /// whole bucket passes when the bucket is full, else it would wait forever.
    fn wait_for(&self, n: u64) -> Duration {
        let need = n.min(self.bucket.size);
        if self.tokens >= need {
            return Duration::ZERO;
        }
        let missing = u128::from(need - self.tokens);
        let ns =
            missing * u128::from(self.bucket.refill_ms) * 1_000_000 / u128::from(self.bucket.size);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).max(Duration::from_micros(50))
    }

    fn take(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n.min(self.bucket.size));
    }
}

/// A direction's buckets.
pub struct Limiter {
    bytes: Option<Tokens>,
    ops: Option<Tokens>,
}

impl Limiter {
    pub fn new(limit: &Limit) -> Limiter {
        Limiter {
            bytes: limit.bandwidth.map(Tokens::new),
            ops: limit.ops.map(Tokens::new),
        }
    }

    /// Takes one frame of `len` bytes if both buckets have it; else how long to wait.
    pub fn admit(&mut self, len: u64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        if let Some(t) = self.bytes.as_mut() {
            t.refill(now);
            wait = wait.max(t.wait_for(len));
        }
        if let Some(t) = self.ops.as_mut() {
            t.refill(now);
            wait = wait.max(t.wait_for(1));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(t) = self.bytes.as_mut() {
            t.take(len);
        }
        if let Some(t) = self.ops.as_mut() {
            t.take(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_size_then_makes_frames_wait() {
        let mut l = Limiter::new(&Limit {
            bandwidth: Some(Bucket {
                size: 3000,
                refill_ms: 1000,
            }),
            ops: Some(Bucket {
                size: 100,
                refill_ms: 1000,
            }),
        });
        assert!(l.admit(1500).is_ok());
        assert!(l.admit(1500).is_ok());
        let wait = l.admit(1500).unwrap_err();
        // 1500 bytes at 3000 a second: about half a second.
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // A frame bigger than the bucket waits for a full bucket, not forever.
        let mut big = Limiter::new(&Limit::bytes_per_sec(1000));
        assert!(big.admit(64 * 1024).is_ok());
        assert!(big.admit(64 * 1024).unwrap_err() <= Duration::from_secs(1));
    }

    #[test]
    fn frames_are_limited_by_count_too() {
        let mut l = Limiter::new(&Limit {
            bandwidth: None,
            ops: Some(Bucket {
                size: 2,
                refill_ms: 10_000,
            }),
        });
        assert!(l.admit(10).is_ok() && l.admit(10).is_ok());
        assert!(l.admit(10).unwrap_err() > Duration::from_secs(4));
        assert!(Limit {
            bandwidth: Some(Bucket {
                size: 0,
                refill_ms: 1
            }),
            ops: None
        }
        .validate("rx")
        .unwrap_err()
        .contains("rx bandwidth limit"));
    }
}
