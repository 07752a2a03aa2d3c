//! The calls in flight on one runtime: who may still run JavaScript, and with which deadline a
//! host call goes out.
//!
//! One runtime runs JavaScript one slice at a time, and a slice cannot be attributed to a call:
//! promise continuations of any call run wherever the runtime happens to be driven (QuickJS-ng
//! has no async context, and its promise hooks do not fire for ordinary reactions). So:
//!
//! - **Interrupt** ([`Calls::should_interrupt`]) once *no* registered call has time left. A call
//!   with time left is never cut short by another's deadline. A CPU loop is stopped at the latest
//!   deadline among the calls in flight when it started (calls register under the runtime's
//!   lock, so none can join while it spins), at most one `timeout` away; callers whose deadline
//!   passed earlier already have their answer (the instance stops waiting at their deadline).
//!   JavaScript running while no call is registered (work a function left behind after it
//!   returned) is interrupted at once.
//! - **Meta of a host call** ([`Calls::meta_for`]): a call made through the per-call `ctx` (the
//!   second argument of `execute`) carries that call's id, so its exact meta. One made through
//!   the shared `this.ctx` carries id 0; with one call in flight it gets that call's meta,
//!   otherwise a merge that short-changes no caller: the deepest depth (the depth limit still
//!   holds), the latest deadline (a callee may get more time than its own caller has left, never
//!   less than a caller needs) and a trace parent only if all agree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::CallMeta;

#[derive(Debug)]
pub(super) struct Calls {
    epoch: Instant,
    /// Latest deadline among registered calls, in nanoseconds since `epoch`; 0 when none.
    live_until: AtomicU64,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, CallMeta>,
}

impl Calls {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            live_until: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent even if a holder panicked: every update is one statement.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn refresh(&self, table: &Table) {
        let latest = table
            .entries
            .values()
            .map(|meta| self.nanos(meta.deadline))
            .max()
            .unwrap_or(0);
        self.live_until.store(latest, Ordering::Release);
    }

    /// Registers a call; it stays registered until the guard drops.
    pub(super) fn register(self: &Arc<Self>, meta: CallMeta) -> CallGuard {
        let mut table = self.table();
        table.next_id += 1;
        let id = table.next_id;
        table.entries.insert(id, meta);
        self.refresh(&table);
        CallGuard {
            calls: self.clone(),
            id,
        }
    }

    fn deregister(&self, id: u64) {
        let mut table = self.table();
        table.entries.remove(&id);
        self.refresh(&table);
    }

    /// The interrupt handler's question: has every registered call run out of time?
    pub(super) fn should_interrupt(&self) -> bool {
        self.nanos(Instant::now()) >= self.live_until.load(Ordering::Acquire)
    }

    /// The meta a host call made on behalf of call `id` carries (see the module docs).
    pub(super) fn meta_for(&self, id: u64) -> CallMeta {
        let table = self.table();
        if let Some(meta) = table.entries.get(&id) {
            return meta.clone();
        }
        let mut entries = table.entries.values();
        let Some(first) = entries.next() else {
            // Nothing in flight (a ctx kept past its call): a deadline that has already passed.
            return CallMeta {
                deadline: Instant::now(),
                call_depth: 0,
                trace_parent: None,
            };
        };
        let mut merged = first.clone();
        for meta in entries {
            merged.deadline = merged.deadline.max(meta.deadline);
            merged.call_depth = merged.call_depth.max(meta.call_depth);
            if merged.trace_parent != meta.trace_parent {
                merged.trace_parent = None;
            }
        }
        merged
    }
}

/// A registered call; dropping it deregisters the call.
#[derive(Debug)]
pub(super) struct CallGuard {
    calls: Arc<Calls>,
    id: u64,
}

impl CallGuard {
    pub(super) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.calls.deregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The id `klf:base` passes for the shared `this.ctx` (ids of registered calls start at 1).
    const NO_CALL: u64 = 0;

    fn meta(in_ms: u64, depth: u16, trace: &str) -> CallMeta {
        CallMeta {
            deadline: Instant::now() + Duration::from_millis(in_ms),
            call_depth: depth,
            trace_parent: Some(trace.to_string()),
        }
    }

    #[test]
    fn interrupts_only_when_no_call_has_time_left() {
        let calls = Calls::new();
        assert!(calls.should_interrupt(), "nothing registered");
        let long = calls.register(meta(60_000, 0, "a"));
        let expired = calls.register(CallMeta {
            deadline: Instant::now(),
            call_depth: 0,
            trace_parent: None,
        });
        assert!(!calls.should_interrupt(), "one call still has time");
        drop(long);
        assert!(calls.should_interrupt(), "only an expired call is left");
        drop(expired);
        assert!(calls.should_interrupt());
    }

    #[test]
    fn meta_is_exact_by_id_and_a_safe_merge_without_one() {
        let calls = Calls::new();
        let a = calls.register(meta(1_000, 1, "a"));
        assert_eq!(calls.meta_for(NO_CALL).trace_parent.as_deref(), Some("a"));
        let b = calls.register(meta(5_000, 4, "b"));
        assert_eq!(calls.meta_for(a.id()).call_depth, 1);
        let merged = calls.meta_for(NO_CALL);
        assert_eq!(merged.call_depth, 4);
        assert_eq!(merged.trace_parent, None);
        assert_eq!(merged.deadline, calls.meta_for(b.id()).deadline);
    }
}
