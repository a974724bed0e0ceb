//! ngrok's `circuit_breaker`: when the fraction of 5xx responses over a window reaches
//! the threshold, the edge answers 503 itself for a cool-down, then lets requests
//! through again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back the fraction of 5xx responses looks.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// Fewer requests than this in the window never open the breaker.
pub(crate) const MIN_REQUESTS: u32 = 10;
/// How long an open breaker refuses requests.
pub(crate) const COOL_DOWN: Duration = Duration::from_secs(10);

/// One endpoint's breaker.
pub(crate) struct Breaker {
    threshold: f64,
    state: Mutex<State>,
}

struct State {
    window_start: Instant,
    total: u32,
    failed: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// A breaker that opens at `threshold` (a fraction in (0, 1]).
    pub(crate) fn new(threshold: f64) -> Self {
        Breaker {
            threshold,
            state: Mutex::new(State {
                window_start: Instant::now(),
                total: 0,
                failed: 0,
                open_until: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// False while the breaker is open.
    pub(crate) fn admit(&self) -> bool {
        let mut s = self.state();
        match s.open_until {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                s.open_until = None;
                s.window_start = Instant::now();
                s.total = 0;
                s.failed = 0;
                true
            }
            None => true,
        }
    }

    /// Counts a response with `status`; opens the breaker when the window's fraction of
    /// 5xx reaches the threshold.
    pub(crate) fn record(&self, status: http::StatusCode) {
        let now = Instant::now();
        let mut s = self.state();
        if now.duration_since(s.window_start) > WINDOW {
            s.window_start = now;
            s.total = 0;
            s.failed = 0;
        }
        s.total += 1;
        if status.is_server_error() {
            s.failed += 1;
        }
        if s.total >= MIN_REQUESTS && f64::from(s.failed) / f64::from(s.total) >= self.threshold {
            tracing::warn!(
                failed = s.failed,
                total = s.total,
                cool_down = ?COOL_DOWN,
                "circuit breaker open: the upstream is failing; answering 503 meanwhile"
            );
            s.open_until = Some(now + COOL_DOWN);
            s.total = 0;
            s.failed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn opens_at_the_threshold_and_not_below_the_volume() {
        let b = Breaker::new(0.5);
        for _ in 0..MIN_REQUESTS - 1 {
            b.record(StatusCode::BAD_GATEWAY);
        }
        assert!(b.admit(), "too few requests to judge");
        b.record(StatusCode::OK);
        assert!(!b.admit(), "9 of 10 failed");
        let healthy = Breaker::new(0.5);
        for i in 0..100 {
            healthy.record(if i % 3 == 0 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            });
        }
        assert!(healthy.admit(), "a third failing stays under one half");
    }
}
