//! The metered allocator behind every instance's QuickJS runtime.
//!
//! QuickJS's own `set_memory_limit` refuses allocations over the limit but leaves no trace of it:
//! the function gets a catchable `InternalError: out of memory`, and a function that catches it
//! looks healthy afterwards. This allocator enforces the limit itself and counts every refusal, so
//! the host can tell after a call whether the heap hit its limit during it, whatever the JavaScript
//! did. It also makes the heap size readable without taking the runtime's lock
//! ([`Meter::used`]).
//!
//! Every block carries a 16-byte header holding its size, because QuickJS asks for usable sizes
//! and frees without one.

use std::alloc::{self, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rquickjs::allocator::Allocator;

/// Alignment of every block, and the size of the header in front of it (16 keeps the payload as
/// aligned as `malloc` would).
const ALIGN: usize = 16;
const HEADER: usize = ALIGN;

/// Heap accounting of one runtime, shared between its allocator and the host.
#[derive(Debug)]
pub(super) struct Meter {
    limit: usize,
    used: AtomicUsize,
    refusals: AtomicU64,
}

impl Meter {
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
        })
    }

    /// Bytes currently allocated, headers included.
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// How many allocations were refused since the runtime was created.
    pub(super) fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Acquire)
    }

    /// Reserves `bytes`, or counts a refusal.
    fn reserve(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            self.refuse();
            return false;
        }
        true
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn refuse(&self) {
        self.refusals.fetch_add(1, Ordering::Release);
    }
}

/// The allocator handed to `AsyncRuntime::new_with_alloc`.
pub(super) struct MeteredAllocator(pub(super) Arc<Meter>);

/// Payload size rounded up to the alignment, and the total block size; `None` on overflow.
fn sizes(requested: usize) -> Option<(usize, Layout)> {
    let payload = requested.max(1).checked_next_multiple_of(ALIGN)?;
    let total = payload.checked_add(HEADER)?;
    let layout = Layout::from_size_align(total, ALIGN).ok()?;
    Some((payload, layout))
}

/// The header's address from a payload pointer this allocator returned.
///
/// # Safety
/// `payload` must come from this allocator and not be freed.
unsafe fn header_of(payload: *mut u8) -> *mut usize {
    // SAFETY: every payload sits HEADER bytes after the start of its block.
    unsafe { payload.sub(HEADER).cast::<usize>() }
}

impl MeteredAllocator {
    fn allocate(&mut self, requested: usize, zeroed: bool) -> *mut u8 {
        let Some((payload, layout)) = sizes(requested) else {
            self.0.refuse();
            return std::ptr::null_mut();
        };
        if !self.0.reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the layout has a non-zero size.
        let block = unsafe {
            if zeroed {
                alloc::alloc_zeroed(layout)
            } else {
                alloc::alloc(layout)
            }
        };
        if block.is_null() {
            self.0.release(layout.size());
            self.0.refuse();
            return block;
        }
        // SAFETY: the block is at least HEADER + payload bytes and aligned for usize.
        unsafe {
            block.cast::<usize>().write(payload);
            block.add(HEADER)
        }
    }
}

// SAFETY: blocks are at least the requested size and 16-byte aligned; `usable_size` reads the
// payload size the block was created with; `dealloc`/`realloc` rebuild the exact layout of the
// block from its header.
unsafe impl Allocator for MeteredAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        self.allocate(size, false)
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        match count.checked_mul(size) {
            Some(total) => self.allocate(total, true),
            None => {
                self.0.refuse();
                std::ptr::null_mut()
            }
        }
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        if ptr.is_null() {
            return;
        }
        // SAFETY: the caller passes a live block of this allocator; its header holds the payload
        // size the block was created with, so the layout is the one it was allocated with.
        unsafe {
            let header = header_of(ptr);
            let total = header.read() + HEADER;
            alloc::dealloc(
                header.cast(),
                Layout::from_size_align_unchecked(total, ALIGN),
            );
            self.0.release(total);
        }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.alloc(new_size);
        }
        if new_size == 0 {
            // SAFETY: as for `dealloc`.
            unsafe { self.dealloc(ptr) };
            return std::ptr::null_mut();
        }
        let Some((payload, new_layout)) = sizes(new_size) else {
            self.0.refuse();
            return std::ptr::null_mut();
        };
        // SAFETY: the caller passes a live block of this allocator (see `dealloc`).
        unsafe {
            let header = header_of(ptr);
            let old_total = header.read() + HEADER;
            let new_total = new_layout.size();
            if new_total > old_total && !self.0.reserve(new_total - old_total) {
                return std::ptr::null_mut();
            }
            let old_layout = Layout::from_size_align_unchecked(old_total, ALIGN);
            let block = alloc::realloc(header.cast(), old_layout, new_total);
            if block.is_null() {
                // The old block is untouched; QuickJS keeps using it.
                if new_total > old_total {
                    self.0.release(new_total - old_total);
                }
                self.0.refuse();
                return block;
            }
            if new_total < old_total {
                self.0.release(old_total - new_total);
            }
            block.cast::<usize>().write(payload);
            block.add(HEADER)
        }
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        if ptr.is_null() {
            return 0;
        }
        // SAFETY: the caller passes a live block of this allocator.
        unsafe { header_of(ptr).read() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_over_the_limit_and_counts_it() {
        let meter = Meter::new(4096);
        let mut allocator = MeteredAllocator(meter.clone());
        let a = allocator.alloc(1000);
        assert!(!a.is_null());
        assert_eq!(meter.used(), 1008 + HEADER);
        assert!(allocator.alloc(5000).is_null());
        assert_eq!(meter.refusals(), 1);
        // SAFETY: `a` is a live block of this allocator.
        unsafe {
            assert_eq!(MeteredAllocator::usable_size(a), 1008);
            let b = allocator.realloc(a, 2000);
            assert!(!b.is_null());
            assert_eq!(meter.used(), 2000 + HEADER);
            assert!(allocator.realloc(b, 8000).is_null());
            assert_eq!(meter.refusals(), 2);
            assert_eq!(meter.used(), 2000 + HEADER);
            allocator.dealloc(b);
        }
        assert_eq!(meter.used(), 0);
    }
}
