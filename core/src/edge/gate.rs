//! Bounds tunnel connections that have not authenticated yet, per source IP and in
//! total, so that clients that never authenticate cannot take every socket of the edge.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Counts unauthenticated tunnel connections.
pub(crate) struct Gate {
    per_ip_limit: usize,
    total_limit: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One unauthenticated connection's place; freed when dropped (authenticated or closed).
pub(crate) struct Pass {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Gate {
    pub(crate) fn new(per_ip_limit: usize, total_limit: usize) -> Arc<Gate> {
        Arc::new(Gate {
            per_ip_limit,
            total_limit,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `ip`, or `None` when `ip` or the edge is at
    /// its limit (the caller closes the connection at once).
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Pass> {
        let mut counts = self.counts();
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if counts.total >= self.total_limit || from_ip >= self.per_ip_limit {
            return None;
        }
        counts.total += 1;
        counts.per_ip.insert(ip, from_ip + 1);
        Some(Pass {
            gate: self.clone(),
            ip,
        })
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut counts = self.gate.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_and_in_total_and_frees_on_drop() {
        let gate = Gate::new(2, 3);
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let a1 = gate.enter(a).unwrap();
        let _a2 = gate.enter(a).unwrap();
        assert!(gate.enter(a).is_none(), "per-IP limit");
        let _b1 = gate.enter(b).unwrap();
        assert!(gate.enter(b).is_none(), "total limit");
        drop(a1);
        assert!(gate.enter(b).is_some(), "a dropped pass frees its place");
        assert_eq!(gate.counts().per_ip.len(), 2);
    }
}
