//! Host timers for personalities ([`Platform::set_timer`]): one thread per VM waits for the
//! earliest deadline and runs the callbacks that are due, with the VM's platform and memory.
//! Xen's single-shot timer (`VIRQ_TIMER`) and the PV console's input polling use them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use polyvisor_core::{Platform, TimerCallback};

use crate::vm::VmShared;

/// The longest the thread sleeps before it looks at the VM's state again.
const IDLE_WAIT: Duration = Duration::from_millis(50);

struct Armed {
    id: u32,
    deadline_ns: u64,
    fire: TimerCallback,
}

/// The armed timers of one VM.
#[derive(Default)]
pub struct Timers {
    armed: Mutex<Vec<Armed>>,
    changed: Condvar,
    /// Callbacks taken from `armed` and not yet run: they may still wake a vCPU.
    running: AtomicUsize,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.armed.lock().map(|a| a.len()).unwrap_or(0);
        f.debug_struct("Timers").field("armed", &n).finish()
    }
}

impl Timers {
    /// Arms (or with `None` disarms) timer `id`.
    pub fn set(&self, id: u32, timer: Option<(u64, TimerCallback)>) {
        if let Ok(mut armed) = self.armed.lock() {
            armed.retain(|a| a.id != id);
            if let Some((deadline_ns, fire)) = timer {
                armed.push(Armed { id, deadline_ns, fire });
            }
        }
        self.changed.notify_all();
    }

    /// Whether any timer is armed or its callback still running.
    pub fn any_armed(&self) -> bool {
        let armed = self.armed.lock().map(|a| !a.is_empty()).unwrap_or(false);
        armed || self.running.load(Ordering::Acquire) > 0
    }

    /// Wakes the thread (the VM is ending).
    pub fn notify(&self) {
        if let Ok(_a) = self.armed.lock() {
            self.changed.notify_all();
        }
    }

    /// Takes the callbacks due at `now_ns`, or waits until the next deadline (at most
    /// [`IDLE_WAIT`]) and returns none.
    fn due_or_wait(&self, now_ns: u64) -> Vec<TimerCallback> {
        let Ok(mut armed) = self.armed.lock() else {
            return Vec::new();
        };
        let mut due = Vec::new();
        armed.retain(|a| {
            if a.deadline_ns <= now_ns {
                due.push(a.fire.clone());
                false
            } else {
                true
            }
        });
        if !due.is_empty() {
            // Counted before the lock is released, so `any_armed` never sees neither.
            self.running.fetch_add(due.len(), Ordering::AcqRel);
            return due;
        }
        let next = armed.iter().map(|a| a.deadline_ns).min();
        let wait = next.map_or(IDLE_WAIT, |d| Duration::from_nanos(d - now_ns).min(IDLE_WAIT));
        let _ = self.changed.wait_timeout(armed, wait);
        Vec::new()
    }
}

impl VmShared {
    /// The timer thread's body: runs due callbacks until the VM ends.
    pub fn run_timers(&self) {
        while !self.stopping() {
            let due = self.timers.due_or_wait(self.now_ns());
            for fire in &due {
                fire(self as &dyn Platform, self.mem.ram());
            }
            if !due.is_empty() {
                self.timers.running.fetch_sub(due.len(), Ordering::AcqRel);
                self.end_if_all_halted();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn rearming_replaces_and_disarming_removes() {
        let t = Timers::default();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        let fire: TimerCallback = Arc::new(move |_, _| {
            h.fetch_add(1, Ordering::Relaxed);
        });
        t.set(1, Some((100, fire.clone())));
        t.set(1, Some((200, fire.clone())));
        assert!(t.due_or_wait(150).is_empty());
        assert_eq!(t.due_or_wait(200).len(), 1);
        assert!(t.any_armed(), "a callback taken and not yet run still counts");
        t.running.fetch_sub(1, Ordering::AcqRel);
        assert!(!t.any_armed());
        t.set(2, Some((10, fire)));
        t.set(2, None);
        assert!(!t.any_armed());
    }
}
