//! Ring mode (shared-memory rings between the shim and the daemon) as programs see it: every
//! read/write-family call on a stream, revocation to plain socketpair bytes in the middle of a
//! transfer (fork with the child reading through stdio, dup, SCM_RIGHTS, exec), and
//! `WEFT_RINGS=0`. Every byte
//! is checked at its offset by `tests/c/ring_stream.c`, so a lost, doubled or reordered byte
//! fails the test.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use weft_tests::shim::{c_program, free_port, run_ok, Bg};
use weft_tests::Overlay;

const LIMIT: Duration = Duration::from_secs(120);

/// Rings counters of node `n`'s daemon (`attached`, `detached`, ...).
fn rings(o: &Overlay, n: usize) -> (u64, u64) {
    let r = &o.status(n)["rings"];
    (
        r["attached"].as_u64().unwrap_or(0),
        r["detached"].as_u64().unwrap_or(0),
    )
}

/// Streams `total` bytes from node 2 to node 1; the receiver revokes ring mode at
/// `revoke_at` bytes as `mode` says. Returns the receiver's output.
fn transfer(o: &Overlay, total: u64, revoke_at: u64, mode: &str, rings_on: bool) -> String {
    transfer_with(o, total, revoke_at, mode, "blocking", rings_on)
}

/// [`transfer`] with the sender's mode (`blocking`, or `epoll`: non-blocking writes and
/// edge-triggered `EPOLLOUT`).
fn transfer_with(
    o: &Overlay,
    total: u64,
    revoke_at: u64,
    mode: &str,
    sender_mode: &str,
    rings_on: bool,
) -> String {
    // Compiled once: `c_program` is per process, and these tests run in parallel threads.
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    let exe = EXE.get_or_init(|| c_program("ring_stream"));
    let exe = exe.to_str().expect("utf-8 path");
    let port = free_port();
    let flag = if rings_on { "1" } else { "0" };
    let mut sender = o.shim(2, exe);
    sender
        .args(["send", &port.to_string(), &total.to_string(), sender_mode])
        .env("WEFT_RINGS", flag);
    let mut sender = Bg::spawn(sender, &o.dir, "ring-sender");
    o.wait_listener(2, port);
    let mut receiver = o.shim(1, exe);
    receiver
        .args(["recv", &o.ip(2), &port.to_string()])
        .args([total.to_string(), revoke_at.to_string(), mode.to_string()])
        .env("WEFT_RINGS", flag);
    let out = run_ok(receiver, &o.dir, "ring-receiver", LIMIT);
    let sent = sender.success(LIMIT);
    assert!(sent.contains("sender done"), "{sent}");
    out
}

#[test]
fn a_fork_mid_transfer_hands_1_gb_to_a_child_reading_with_stdio() {
    let o = Overlay::ready_chain(2, "");
    let total: u64 = 1 << 30;
    let out = transfer(&o, total, 300 << 20, "fork", true);
    assert!(out.contains(&format!("child ok {total}")), "{out}");
    assert!(out.contains("parent read"), "{out}");
    let (attached, detached) = rings(&o, 1);
    assert!(attached >= 1, "the receiver never used ring mode");
    assert_eq!(detached, 1, "the fork did not revoke ring mode");
    let (attached, detached) = rings(&o, 2);
    assert!(
        attached >= 1,
        "the sender never used ring mode: {}",
        o.status(2)["rings"]
    );
    assert_eq!(detached, 0, "the sender left ring mode");
}

/// 64 MB whose sending socket is revoked by `how` after 20 MB: the bytes arrive whole (the
/// checker prints "`done` ok TOTAL") and node 1 counts exactly one detach.
fn revoked_mid_transfer(how: &str, done: &str, what: &str) {
    let o = Overlay::ready_chain(2, "");
    let total: u64 = 64 << 20;
    let out = transfer(&o, total, 20 << 20, how, true);
    assert!(out.contains(&format!("{done} ok {total}")), "{out}");
    assert_eq!(rings(&o, 1).1, 1, "{what}");
}

#[test]
fn a_dup_mid_transfer_continues_on_plain_bytes() {
    revoked_mid_transfer("dup", "reader", "dup did not revoke ring mode");
}

#[test]
fn a_session_passed_with_scm_rights_mid_transfer_continues_on_plain_bytes() {
    revoked_mid_transfer("scm", "reader", "SCM_RIGHTS did not revoke ring mode");
}

#[test]
fn an_exec_mid_transfer_hands_the_stream_to_the_new_program() {
    revoked_mid_transfer("exec", "exec", "exec did not revoke ring mode");
}

#[test]
fn every_read_call_in_ring_mode_sees_the_stream_in_order() {
    let o = Overlay::ready_chain(2, "");
    let total: u64 = 64 << 20;
    let out = transfer(&o, total, u64::MAX, "none", true);
    assert!(out.contains(&format!("reader ok {total}")), "{out}");
    let (attached, detached) = rings(&o, 1);
    assert!(
        attached >= 1 && detached == 0,
        "attached {attached} detached {detached}"
    );
}

#[test]
fn edge_triggered_epoll_sees_every_readiness_change_of_a_ring_fd() {
    let o = Overlay::ready_chain(2, "");
    let total: u64 = 64 << 20;
    let out = transfer_with(&o, total, u64::MAX, "epoll", "epoll", true);
    assert!(out.contains(&format!("reader ok {total}")), "{out}");
    let (attached, detached) = rings(&o, 1);
    assert!(
        attached >= 1 && detached == 0,
        "attached {attached} detached {detached}"
    );
}

#[test]
fn weft_rings_0_keeps_streams_on_the_socketpair() {
    let o = Overlay::ready_chain(2, "");
    let total: u64 = 16 << 20;
    let out = transfer(&o, total, 4 << 20, "fork", false);
    assert!(out.contains(&format!("child ok {total}")), "{out}");
    assert_eq!(rings(&o, 1), (0, 0));
    assert_eq!(rings(&o, 2), (0, 0));
}
