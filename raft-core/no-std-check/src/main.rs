//! A `#![no_std]` binary that links `raft-core`. It fails to build if
//! `raft-core` or any of its dependencies links `std`: `std` brings its own
//! `#[panic_handler]`, and the one below then collides with it as a duplicate
//! `panic_impl` lang item. See README.md.
//!
//! Builds for the host (entry point `main`, called by the C runtime's start
//! files; libc is linked only for `abort` and the `mem*` routines `core`
//! calls) and for bare-metal `x86_64-unknown-none` (entry point `_start`).
//! Running it on the host elects a leader in a three-node in-memory cluster,
//! commits one command and exits 0; any other outcome exits non-zero.

#![no_std]
#![no_main]
// CI builds this crate as a check: any warning fails it.
#![deny(warnings)]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::hint::black_box;
use core::sync::atomic::{AtomicUsize, Ordering};

use raft_core::{Action, Bytes, Config, Event, Node, Role};

/// Node ids are 1..=3; their slot in the arrays below is 0..=2.
fn slot(id: u64) -> usize {
    usize::try_from(id - 1).unwrap_or(usize::MAX)
}

/// Three voters, a perfect network and a disk that syncs at once: elect a
/// leader, commit one command on every node. Returns 0 on success.
fn run_cluster() -> i32 {
    let ids: Vec<u64> = black_box(vec![1, 2, 3]);
    let mut nodes: Vec<Node> = Vec::new();
    for &id in &ids {
        match Node::new(Config::new(id, ids.clone()), black_box(id)) {
            Ok(node) => nodes.push(node),
            Err(_) => return 1,
        }
    }
    let mut inbox: VecDeque<(u64, Event)> = VecDeque::new();
    let mut applied = [0usize; 3];
    let mut actions = Vec::new();

    let mut deliver = |nodes: &mut Vec<Node>, inbox: &mut VecDeque<(u64, Event)>, applied: &mut [usize; 3]| {
        while let Some((to, event)) = inbox.pop_front() {
            nodes[slot(to)].step_into(event, &mut actions);
            for action in actions.drain(..) {
                match action {
                    Action::Send { to: peer, message } => inbox.push_back((peer, Event::Message { from: to, message })),
                    Action::Persist(p) => inbox.push_back((to, Event::Persisted { seq: p.seq })),
                    Action::Apply { entries } => {
                        applied[slot(to)] += entries.iter().filter(|e| e.data == "x=1").count();
                    }
                    _ => {}
                }
            }
        }
    };

    let mut leader = None;
    for _ in 0..200 {
        for &id in &ids {
            inbox.push_back((id, Event::Tick));
        }
        deliver(&mut nodes, &mut inbox, &mut applied);
        leader = nodes.iter().find(|n| n.role() == Role::Leader).map(Node::id);
        if leader.is_some() {
            break;
        }
    }
    let Some(leader) = leader else { return 2 };

    inbox.push_back((leader, Event::Propose { data: Bytes::from_static(b"x=1") }));
    deliver(&mut nodes, &mut inbox, &mut applied);
    // Heartbeats carry the new commit index to the followers.
    for _ in 0..4 {
        inbox.push_back((leader, Event::Tick));
        deliver(&mut nodes, &mut inbox, &mut applied);
    }
    if black_box(applied) == [1, 1, 1] { 0 } else { 3 }
}

// ---------------------------------------------------------------------------
// The runtime pieces std would otherwise provide. `unsafe` is allowed in this
// crate only (the main workspace forbids it): a global allocator and the
// entry points are unsafe by nature.
// ---------------------------------------------------------------------------

/// The panic handler that collides with std's if std is ever linked.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    abort()
}

#[cfg(not(target_os = "none"))]
fn abort() -> ! {
    #[link(name = "c")]
    unsafe extern "C" {
        safe fn abort() -> !;
    }
    abort()
}

#[cfg(target_os = "none")]
fn abort() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Host entry point, called by the C runtime's start files.
#[cfg(not(target_os = "none"))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    run_cluster()
}

/// Bare-metal entry point: nothing to return to.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
extern "C" fn _start() -> ! {
    black_box(run_cluster());
    loop {
        core::hint::spin_loop();
    }
}

/// The host's prebuilt `liballoc` was compiled with `panic = "unwind"`, so
/// its unwind tables name this personality routine even though nothing here
/// unwinds (`panic = "abort"`); define it so the link succeeds. Never called.
#[cfg(not(target_os = "none"))]
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

const HEAP_SIZE: usize = 1 << 20;

/// A bump allocator over a static array: never frees, returns null when the
/// array is used up (the alloc error handler then panics, which aborts).
struct Bump {
    heap: UnsafeCell<[u8; HEAP_SIZE]>,
    next: AtomicUsize,
}

// SAFETY: `next` is only advanced atomically and every successful
// `fetch_update` hands out a disjoint range of `heap`, so threads (there are
// none here) could never receive overlapping memory.
unsafe impl Sync for Bump {}

// SAFETY: each returned block lies inside `heap`, is aligned to
// `layout.align()` (a power of two, as `Layout` guarantees), is `size` bytes
// long, and is never handed out again.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.heap.get() as usize;
        let mut start = 0;
        let reserved = self.next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            let aligned = (base + next).checked_add(layout.align() - 1)? & !(layout.align() - 1);
            let end = aligned.checked_add(layout.size())?;
            if end > base + HEAP_SIZE {
                return None;
            }
            start = aligned - base;
            Some(end - base)
        });
        match reserved {
            Ok(_) => self.heap.get().cast::<u8>().wrapping_add(start),
            Err(_) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOCATOR: Bump = Bump { heap: UnsafeCell::new([0; HEAP_SIZE]), next: AtomicUsize::new(0) };
