//! Waits inside a plugin call end at its deadline.
//!
//! Epoch interruption stops a plugin only while its own code runs. A plugin
//! that waits in a host call instead (`std::thread::sleep` is `wasi:io/poll`
//! blocking on a monotonic-clock pollable) would hold its thread, and its
//! WASI turn (one per CPU), for as long as it asked: an auth plugin that
//! slept a second on every request would stall the proxy rather than be
//! denied after 20 ms, an idle plugin the sweeper. wasmtime-wasi's `poll`
//! and `pollable.block` are replaced here by ones that give up at the
//! call's deadline, which then fails as a deadline miss. (Nothing else a
//! plugin can reach waits: no sockets or files, an empty stdin, and stdout
//! and stderr that are always ready.)

use wasmtime::component::{Linker, Resource};
use wasmtime::{StoreContextMut, Trap};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};

use super::host_state::HostState;

/// The interface, at the version wasmtime-wasi links it (its WIT's);
/// plugins importing an older 0.2 version are linked to it.
const POLL: &str = "wasi:io/poll@0.2.12";

/// Replaces the linker's waiting functions with deadline-bound ones. Call
/// after WASI is added.
pub(super) fn bound_by_deadline(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL)?;
    poll.func_wrap("poll", |mut store: StoreContextMut<'_, HostState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
        let until = store.data().wait_until.unwrap_or_else(tokio::time::Instant::now);
        let table = store.data_mut().table();
        match in_tokio(async move { tokio::time::timeout_at(until, table.poll(pollables)).await }) {
            Ok(ready) => Ok((ready?,)),
            Err(_) => Err(Trap::Interrupt.into()),
        }
    })?;
    poll.func_wrap("[method]pollable.block", |mut store: StoreContextMut<'_, HostState>, (pollable,): (Resource<DynPollable>,)| {
        let until = store.data().wait_until.unwrap_or_else(tokio::time::Instant::now);
        let table = store.data_mut().table();
        match in_tokio(async move { tokio::time::timeout_at(until, table.block(pollable)).await }) {
            Ok(done) => done,
            Err(_) => Err(Trap::Interrupt.into()),
        }
    })?;
    linker.allow_shadowing(false);
    Ok(())
}
