//! Relay buffers, held only while bytes are in flight.
//!
//! A session that moves no bytes should cost no buffer: tens of thousands of
//! idle sessions would otherwise pin two relay buffers each. The relay takes
//! a buffer from this pool just before a read and hands it back as soon as
//! the socket has nothing more to read (see [`crate::relay`]), so buffers
//! are held by sessions with bytes in flight only (including a slow reader's
//! unwritten chunk, which bounds its memory at one buffer per direction).
//!
//! The pool is per worker thread (no lock, no contention) and capped in
//! bytes, so it never holds more than [`POOL_BYTES`] per thread; beyond
//! that, buffers go back to the allocator.

use std::cell::{Cell, RefCell};

/// Most bytes of idle buffers kept per thread.
pub const POOL_BYTES: usize = 512 * 1024;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static POOLED: Cell<usize> = const { Cell::new(0) };
}

/// A zeroed-or-reused buffer of exactly `size` bytes.
pub fn take(size: usize) -> Vec<u8> {
    let reused = POOL
        .try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            let i = p.iter().rposition(|b| b.len() == size)?;
            let b = p.swap_remove(i);
            let _ = POOLED.try_with(|n| n.set(n.get().saturating_sub(size)));
            Some(b)
        })
        .ok()
        .flatten();
    reused.unwrap_or_else(|| vec![0u8; size])
}

/// Hand a buffer back (kept for reuse if the pool has room).
pub fn give(buf: Vec<u8>) {
    let size = buf.len();
    if size == 0 {
        return;
    }
    let _ = POOL.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        let pooled = POOLED.try_with(Cell::get).unwrap_or(POOL_BYTES);
        if pooled + size <= POOL_BYTES {
            p.push(buf);
            let _ = POOLED.try_with(|n| n.set(pooled + size));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_size_and_the_pool_is_capped() {
        let mut a = take(8192);
        assert_eq!(a.len(), 8192);
        a[0] = 7;
        let p = a.as_ptr();
        give(a);
        let b = take(8192);
        assert_eq!(b.as_ptr(), p, "the pooled buffer is handed out again");
        let c = take(4096);
        assert_eq!(c.len(), 4096, "another size is a fresh buffer");
        give(b);
        give(c);
        // Fill past the cap: the pool keeps no more than POOL_BYTES.
        let many: Vec<_> = (0..POOL_BYTES / 8192 + 8).map(|_| take(8192)).collect();
        for b in many {
            give(b);
        }
        assert!(POOLED.with(Cell::get) <= POOL_BYTES);
        let held: usize = POOL.with(|p| p.borrow().iter().map(Vec::len).sum());
        assert_eq!(held, POOLED.with(Cell::get));
    }
}
