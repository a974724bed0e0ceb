//! The `rate-limit` action's counters: a sliding window per bucket, shared by every
//! clone of the policy, with a bounded number of buckets.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buckets kept per action; beyond it the oldest bucket is forgotten.
pub(crate) const MAX_BUCKETS: usize = 100_000;

/// A sliding-window limiter: `capacity` requests per `window`, per bucket key.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    capacity: u64,
    window: Duration,
    state: Arc<Mutex<Buckets>>,
}

struct Buckets {
    /// Keys are hashed with a per-policy random key: a bucket costs a few words
    /// whatever the size of the header it comes from.
    hasher: RandomState,
    map: HashMap<u64, Window>,
    /// Keys in the order they were created, to evict the oldest.
    order: VecDeque<u64>,
    max: usize,
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buckets")
            .field("buckets", &self.map.len())
            .finish()
    }
}

/// The counts of the current window (which began at `start`) and of the one before.
struct Window {
    start: Instant,
    current: u64,
    previous: u64,
}

impl Limiter {
    /// A limiter allowing `capacity` requests per `window` in each bucket.
    pub(crate) fn new(capacity: u64, window: Duration) -> Self {
        Self::with_max(capacity, window, MAX_BUCKETS)
    }

    /// The same, keeping at most `max` buckets.
    pub(crate) fn with_max(capacity: u64, window: Duration, max: usize) -> Self {
        Limiter {
            capacity,
            window,
            state: Arc::new(Mutex::new(Buckets {
                hasher: RandomState::new(),
                map: HashMap::new(),
                order: VecDeque::new(),
                max: max.max(1),
            })),
        }
    }

    /// The number of buckets held.
    #[cfg(test)]
    pub(crate) fn buckets(&self) -> usize {
        self.state.lock().map_or(0, |s| s.map.len())
    }

    /// Counts one request in the bucket `key` at `now`: `Err(wait)` when the bucket is
    /// full (the request is not counted), `wait` being when one would be admitted.
    pub(crate) fn check(&self, key: &[String], now: Instant) -> Result<(), Duration> {
        let Ok(mut state) = self.state.lock() else {
            // A panic while counting: fail open rather than refuse every request.
            return Ok(());
        };
        let state = &mut *state;
        let hash = state.hasher.hash_one(key);
        if !state.map.contains_key(&hash) {
            state.order.push_back(hash);
            state.map.insert(
                hash,
                Window {
                    start: now,
                    current: 0,
                    previous: 0,
                },
            );
            while state.map.len() > state.max {
                match state.order.pop_front() {
                    Some(old) => state.map.remove(&old),
                    None => break,
                };
            }
        }
        let Some(w) = state.map.get_mut(&hash) else {
            return Ok(());
        };
        self.advance(w, now);
        let elapsed = now.saturating_duration_since(w.start);
        let f = elapsed.as_secs_f64() / self.window.as_secs_f64();
        let estimate = w.previous as f64 * (1.0 - f) + w.current as f64;
        if estimate + 1.0 > self.capacity as f64 {
            return Err(self.wait(w, elapsed));
        }
        w.current += 1;
        Ok(())
    }

    /// Moves the bucket's window forward to the one holding `now`.
    fn advance(&self, w: &mut Window, now: Instant) {
        let elapsed = now.saturating_duration_since(w.start);
        if elapsed < self.window {
            return;
        }
        let periods = elapsed.as_nanos() / self.window.as_nanos().max(1);
        w.previous = if periods == 1 { w.current } else { 0 };
        w.current = 0;
        let into = elapsed.as_nanos() % self.window.as_nanos().max(1);
        w.start = now - Duration::from_nanos(u64::try_from(into).unwrap_or(0));
    }

    /// How long until the bucket admits one more request, `elapsed` into its window.
    fn wait(&self, w: &Window, elapsed: Duration) -> Duration {
        let (cap, win, e) = (
            self.capacity as f64,
            self.window.as_secs_f64(),
            elapsed.as_secs_f64(),
        );
        let (c, p) = (w.current as f64, w.previous as f64);
        let t = if c + 1.0 <= cap && p > 0.0 {
            // The previous window's weight has to fade enough, within this window.
            win * (1.0 - (cap - c - 1.0) / p) - e
        } else {
            // This window is full: the next one starts with it as its previous.
            (win - e) + win * (1.0 - (cap - 1.0) / c.max(1.0))
        };
        Duration::from_secs_f64(t.clamp(0.0, 2.0 * win))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Vec<String> {
        vec![s.to_owned()]
    }

    #[test]
    fn admits_capacity_per_window_and_slides() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(&key("a"), t0).is_ok());
        }
        let wait = l.check(&key("a"), t0).expect_err("full");
        assert!(
            wait > Duration::from_secs(60) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert!(l.check(&key("b"), t0).is_ok(), "buckets are separate");
        // Half-way through the next window, the previous one weighs 1.5: one more fits.
        let t1 = t0 + Duration::from_secs(90);
        assert!(l.check(&key("a"), t1).is_ok());
        assert!(l.check(&key("a"), t1).is_err());
        // Two windows later, everything is forgotten.
        let t2 = t0 + Duration::from_secs(200);
        for _ in 0..3 {
            assert!(l.check(&key("a"), t2).is_ok());
        }
    }

    #[test]
    fn clones_share_counters_and_buckets_are_bounded() {
        let l = Limiter::with_max(1, Duration::from_secs(60), 2);
        let c = l.clone();
        let t0 = Instant::now();
        assert!(l.check(&key("a"), t0).is_ok());
        assert!(c.check(&key("a"), t0).is_err());
        assert!(c.check(&key("b"), t0).is_ok());
        assert!(c.check(&key("c"), t0).is_ok());
        assert_eq!(l.buckets(), 2);
        // "a" was the oldest: evicted, so it starts afresh.
        assert!(l.check(&key("a"), t0).is_ok());
    }
}
