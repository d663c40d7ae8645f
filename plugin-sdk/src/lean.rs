//! A lean runtime for `#![no_std]` plugins: an allocator, a panic handler
//! and `cabi_realloc`, installed with [`lean_runtime!`](crate::lean_runtime).
//!
//! Why: a plugin built with `std` imports a dozen WASI interfaces (stdio,
//! environment, exit...) that the host must link on every instantiation, and
//! its allocator grows memory on the first allocation of every call. A
//! `no_std` plugin imports only Spawner's `host` interface and allocates
//! from a static arena, which cut the cost of an auth call by about a third
//! (measured in bench/README.md). The default plugins use it; any plugin may.
//!
//! The allocator is a bump allocator: Spawner gives every call a fresh
//! instance, so memory is reclaimed wholesale when the call ends. It reuses
//! only the most recent allocation (freeing or growing it in place), so a
//! call that churns through more than its memory limit in temporary
//! allocations fails; decisions allocate kilobytes. Past its static arena
//! it takes the memory after the program's static data (`__heap_base`),
//! then grows memory: a plugin on it must not link another allocator
//! there, such as libc's `malloc` (C code in a dependency).
//!
//! A panic is written to the host log (so `spawner plugin check` and the
//! host's error report show the message) and then traps.
//!
//! `lean_runtime!(panic = trap)` traps without the message instead. That is
//! for plugins whose own code calls no host function (the default auth
//! plugin): such a plugin then imports nothing, and the host instantiates
//! one core module per call instead of three, because an import that passes
//! a string needs the plugin's memory before the plugin exists, which
//! wit-component solves with two small extra modules. Measured: an auth
//! decision about 22% cheaper (bench/README.md). The host still
//! reports the trap, with the wasm backtrace.

#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

/// Bytes of static arena. Small, so that with a 32 KiB stack a plugin's
/// memory starts at one 64 KiB page, which the host resets by copying
/// (cheaper than scanning for dirtied pages); a request's strings take a
/// few KiB. Past it the allocator takes the rest of memory's last page
/// (with a larger stack, most of a page), then grows memory.
pub const ARENA_BYTES: usize = 16 * 1024;

const WASM_PAGE: usize = 64 * 1024;

struct State {
    next: usize,
    end: usize,
    /// Start of the most recent allocation (for in-place free and grow).
    last: usize,
}

/// The bump allocator (see the module docs).
pub struct Bump {
    arena: UnsafeCell<[u8; ARENA_BYTES]>,
    state: UnsafeCell<State>,
}

// SAFETY: plugins run single-threaded (no wasm threads), one instance per
// call; there is never concurrent access.
unsafe impl Sync for Bump {}

impl Default for Bump {
    fn default() -> Self {
        Self::new()
    }
}

impl Bump {
    /// An allocator over the static arena.
    pub const fn new() -> Self {
        Bump { arena: UnsafeCell::new([0; ARENA_BYTES]), state: UnsafeCell::new(State { next: 0, end: 0, last: 0 }) }
    }

    /// The allocator's state, initialised on first use. Callers turn the
    /// pointer into a reference for the length of one allocator call; no
    /// two exist at once (plugins are single-threaded).
    fn state(&self) -> *mut State {
        let s = self.state.get();
        // SAFETY: no other reference to the state exists (see above).
        let s = unsafe { &mut *s };
        if s.end == 0 {
            let base = self.arena.get() as usize;
            s.next = base;
            s.end = base + ARENA_BYTES;
            s.last = usize::MAX;
        }
        s
    }

    fn bump(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the only reference for the duration of this call.
        let s = unsafe { &mut *self.state() };
        loop {
            // Checked: near the top of a 4 GiB memory these wrap.
            if let Some(start) = s.next.checked_add(layout.align() - 1).map(|n| n & !(layout.align() - 1))
                && let Some(stop) = start.checked_add(layout.size())
                && stop <= s.end
            {
                s.next = stop;
                s.last = start;
                return start as *mut u8;
            }
            let Some(at_least) = layout.size().checked_add(layout.align()) else { return core::ptr::null_mut() };
            if !grow(s, at_least) {
                return core::ptr::null_mut();
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn grow(s: &mut State, at_least: usize) -> bool {
    unsafe extern "C" {
        /// Where the linker put the end of the program's static data: the
        /// rest of memory is this allocator's (see the module docs: no
        /// other allocator, such as libc's `malloc`, may be linked in).
        static __heap_base: [u8; 0];
    }
    let pages = core::arch::wasm32::memory_size(0);
    let (base, end) = (&raw const __heap_base as usize, pages * WASM_PAGE);
    // First the rest of the last page past the static data, which the
    // memory holds already (with a 64 KiB stack, most of a page).
    if s.end <= base && base < end {
        s.next = base;
        s.end = end;
        if end - base >= at_least {
            return true;
        }
    }
    // Then grow by what is needed, or by as much as memory holds already
    // if more, up to 256 KiB: a call a little over the arena grows a small
    // memory by a page, all of which the host rewrites after the call
    // rather than handing it back to the kernel (host/src/plugins/
    // runtime.rs, `Reset`), and a plugin that allocates much grows in few
    // steps, none more than 256 KiB past what is needed (and the memory
    // limit ends a call whose grow would pass it).
    let grow = at_least.div_ceil(WASM_PAGE).max(pages.min(4));
    let previous = core::arch::wasm32::memory_grow(0, grow);
    if previous == usize::MAX {
        return false;
    }
    let start = previous * WASM_PAGE;
    // A memory of exactly 4 GiB ends past the last address: its last
    // page is left unused rather than wrapping `end` to 0.
    let Some(end) = grow.checked_mul(WASM_PAGE).and_then(|bytes| start.checked_add(bytes)) else { return false };
    if start != s.end {
        s.next = start;
    }
    s.end = end;
    true
}

#[cfg(not(target_arch = "wasm32"))]
fn grow(_: &mut State, _: usize) -> bool {
    let _ = WASM_PAGE;
    false
}

// SAFETY: returns unique, correctly aligned blocks within memory owned by
// the instance; null on exhaustion as GlobalAlloc requires.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.bump(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the only reference for the duration of this call.
        let s = unsafe { &mut *self.state() };
        if ptr as usize == s.last && s.last + layout.size() == s.next {
            s.next = s.last;
            s.last = usize::MAX;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        {
            // SAFETY: the only reference, dropped before `alloc` below.
            let s = unsafe { &mut *self.state() };
            if ptr as usize == s.last && s.last + layout.size() == s.next && s.last + new_size <= s.end {
                s.next = s.last + new_size;
                return ptr;
            }
        }
        // SAFETY: the caller guarantees `layout` is valid with `new_size`.
        let new = unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !new.is_null() {
            // SAFETY: both blocks are at least min(old, new) bytes and distinct.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}

/// The canonical ABI's allocation entry point, over `allocator`.
///
/// # Safety
///
/// Called by the host with arguments following the component model's
/// `cabi_realloc` contract.
pub unsafe fn cabi_realloc(allocator: &Bump, old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    // SAFETY: the component model passes a power-of-two alignment.
    let layout = unsafe { Layout::from_size_align_unchecked(old_len, align) };
    let ptr = if old_len == 0 {
        // SAFETY: as above.
        unsafe { allocator.alloc(Layout::from_size_align_unchecked(new_len, align)) }
    } else {
        // SAFETY: `old` was returned by this allocator with `layout`.
        unsafe { allocator.realloc(old, layout, new_len) }
    };
    if ptr.is_null() {
        // The canonical ABI has no failure path: trap.
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
    }
    ptr
}

/// `memcmp` for plugins without libc (Rust's core calls it to compare
/// slices and strings; on wasm32-wasip2 it normally comes from wasi-libc).
/// Volatile reads keep the optimizer from turning this loop back into a
/// call to `memcmp`.
///
/// # Safety
///
/// `a` and `b` must be valid for reads of `n` bytes.
pub unsafe fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: within the caller's guarantee.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

/// Logs a panic through the host, then traps.
#[cfg(target_arch = "wasm32")]
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write as _;
    struct Buf {
        bytes: [u8; 512],
        len: usize,
    }
    impl core::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let room = self.bytes.len() - self.len;
            let mut take = s.len().min(room);
            while !s.is_char_boundary(take) {
                take -= 1;
            }
            self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
            self.len += take;
            Ok(())
        }
    }
    let mut buf = Buf { bytes: [0; 512], len: 0 };
    let _ = match info.location() {
        Some(l) => write!(buf, "panicked at {}:{}:{}: {}", l.file(), l.line(), l.column(), info.message()),
        None => write!(buf, "panicked: {}", info.message()),
    };
    let text = core::str::from_utf8(&buf.bytes[..buf.len]).unwrap_or("panicked");
    crate::host::log(crate::LogLevel::Error, text);
    core::arch::wasm32::unreachable()
}

/// Installs the lean runtime in a `#![no_std]` plugin crate: the global
/// allocator, the panic handler and `cabi_realloc`. Use it once, next to
/// [`export!`](crate::export). Expands to nothing on native targets, where
/// `cargo test` runs with std.
///
/// ```ignore
/// #![cfg_attr(target_arch = "wasm32", no_std)]
/// extern crate alloc;
/// spawner_plugin_sdk::lean_runtime!();
/// ```
///
/// `lean_runtime!(panic = trap)`: panics trap without logging their message,
/// so a plugin that calls no host function imports nothing (see the module
/// docs for why that is faster).
#[macro_export]
macro_rules! lean_runtime {
    () => {
        $crate::lean_runtime!(@common);

        #[cfg(target_arch = "wasm32")]
        #[panic_handler]
        fn __spawner_lean_panic(info: &::core::panic::PanicInfo<'_>) -> ! {
            $crate::lean::panic(info)
        }
    };
    (panic = trap) => {
        $crate::lean_runtime!(@common);

        #[cfg(target_arch = "wasm32")]
        #[panic_handler]
        fn __spawner_lean_panic(_: &::core::panic::PanicInfo<'_>) -> ! {
            ::core::arch::wasm32::unreachable()
        }
    };
    (@common) => {
        #[cfg(target_arch = "wasm32")]
        #[global_allocator]
        static __SPAWNER_LEAN_ALLOCATOR: $crate::lean::Bump = $crate::lean::Bump::new();

        /// libc's `memcmp` (and `bcmp`), which `core` needs and `no_std`
        /// plugins otherwise lack.
        ///
        /// # Safety
        ///
        /// As `memcmp(3)`.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: same contract.
            unsafe { $crate::lean::memcmp(a, b, n) }
        }

        /// As `memcmp`, answering only equal or not.
        ///
        /// # Safety
        ///
        /// As `bcmp(3)`.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: same contract.
            unsafe { $crate::lean::memcmp(a, b, n) }
        }

        /// The canonical ABI allocator export.
        ///
        /// # Safety
        ///
        /// Called by the host following the component model's contract.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn cabi_realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
            // SAFETY: forwarded under the same contract.
            unsafe { $crate::lean::cabi_realloc(&__SPAWNER_LEAN_ALLOCATOR, old, old_len, align, new_len) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_reuses_the_last_block_and_aligns() {
        let b = Bump::new();
        unsafe {
            let a = b.alloc(Layout::from_size_align(10, 8).unwrap());
            assert_eq!(a as usize % 8, 0);
            let grown = b.realloc(a, Layout::from_size_align(10, 8).unwrap(), 100);
            assert_eq!(grown, a, "the last block grows in place");
            b.dealloc(grown, Layout::from_size_align(100, 8).unwrap());
            let again = b.alloc(Layout::from_size_align(4, 4).unwrap());
            assert_eq!(again, a, "freeing the last block makes room");
            let other = b.alloc(Layout::from_size_align(16, 16).unwrap());
            assert_eq!(other as usize % 16, 0);
            assert!(b.alloc(Layout::from_size_align(ARENA_BYTES, 1).unwrap()).is_null(), "natively there is no memory to grow");
        }
    }
}
