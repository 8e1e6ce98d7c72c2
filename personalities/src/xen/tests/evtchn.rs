//! Event channels: allocation, the VMM's loopback backend, 2-level delivery into shared_info
//! and the upcall, VIRQ_TIMER from the single-shot timer, poll, XenStore and the console
//! through their rings.

use polyvisor_core::testing::Effect;
use polyvisor_core::{Dispatch, Next};

use crate::xen::abi::errno::*;
use crate::xen::ring::RingAccess;
use crate::xen::testutil::*;
use crate::xen::xenstore::{encode, layout, msg, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX};

const EVTCHN: u64 = 32;
const ARG: u64 = 0x8000;
const SHINFO: u64 = 0x10000;
const VECTOR: u8 = 0xf3;

/// A VM with shared_info at SHINFO and upcall vector VECTOR on vCPU 0.
fn vm() -> Vm {
    let vm = Vm::new();
    // XENMEM_add_to_physmap(shared_info) at SHINFO.
    let mut map = [0u8; 24];
    map[0..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    map[16..24].copy_from_slice(&(SHINFO >> 12).to_le_bytes());
    vm.write(ARG, &map);
    assert_eq!(vm.rax64(12, &[7, ARG]), 0);
    vm.write(ARG, &[0, 0, 0, 0, VECTOR, 0, 0, 0]);
    assert_eq!(vm.rax64(34, &[23, ARG]), 0);
    vm.platform.take();
    vm
}

fn op(vm: &Vm, cmd: u64, words: &[u32]) -> (u64, Vec<u32>) {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    vm.write(ARG, &bytes);
    let r = vm.rax64(EVTCHN, &[cmd, ARG]);
    let out = (0..words.len()).map(|i| vm.u32_at(ARG + 4 * i as u64)).collect();
    (r, out)
}

fn pending(vm: &Vm, port: u32) -> bool {
    vm.u64_at(SHINFO + 2048 + 8 * u64::from(port / 64)) & (1 << (port % 64)) != 0
}

#[test]
fn the_loopback_backend_raises_the_other_channel() {
    let vm = vm();
    let (r, out) = op(&vm, 0, &[0, 3, 0]);
    assert_eq!(r, 0);
    let a = out[2];
    let (r, out) = op(&vm, 0, &[0, 4, 0]);
    assert_eq!(r, 0);
    let b = out[2];
    assert!(a > 2 && b > a, "ports {a} {b}");
    // Binding raises the local port (as Xen does); clear both, and the upcall flag.
    vm.write(SHINFO + 2048, &[0; 8]);
    vm.write(SHINFO, &[0; 16]);
    vm.platform.take();
    assert_eq!(op(&vm, 4, &[a]).0, 0);
    assert!(pending(&vm, b) && !pending(&vm, a));
    assert_eq!(vm.read(SHINFO, 1), [1], "evtchn_upcall_pending");
    assert_eq!(vm.u64_at(SHINFO + 8), 1, "evtchn_pending_sel word 0");
    assert!(vm.platform.take().contains(&Effect::Interrupt(0, VECTOR)));
    // A second event while the first waits: no new upcall.
    assert_eq!(op(&vm, 4, &[b]).0, 0);
    assert!(pending(&vm, a));
    assert!(!vm.platform.take().iter().any(|e| matches!(e, Effect::Interrupt(..))));
    // Already bound; unknown backend port; status.
    assert_eq!(op(&vm, 0, &[0, 3, 0]).0, e(EINVAL));
    assert_eq!(op(&vm, 0, &[0, 9, 0]).0, e(EINVAL));
    let (r, st) = op(&vm, 5, &[0x7ff0, a, 0, 0, 0, 0]);
    assert_eq!((r, st[2], st[4], st[5]), (0, 2, 0, 3), "interdomain to dom0 port 3");
    assert_eq!(op(&vm, 3, &[a]).0, 0);
    assert_eq!(op(&vm, 3, &[a]).0, e(EINVAL), "closed twice");
    assert_eq!(op(&vm, 4, &[a]).0, e(EINVAL), "send on a closed port");
    assert_eq!(op(&vm, 0, &[0, 3, 0]).0, 0, "the backend port is free again");
}

#[test]
fn masked_ports_wait_for_unmask() {
    let vm = vm();
    let (_, out) = op(&vm, 6, &[0x7ff0 | (0x7ff0 << 16), 0]);
    let p = out[1];
    let (r, out) = op(&vm, 0, &[0x7ff0, p, 0]);
    assert_eq!(r, 0);
    let q = out[2];
    vm.write(SHINFO + 2048, &[0; 8]);
    vm.write(SHINFO, &[0; 16]);
    // Mask q, send from p: pending but no selector, no upcall.
    vm.write(SHINFO + 2560, &(1u64 << q).to_le_bytes());
    assert_eq!(op(&vm, 4, &[p]).0, 0);
    assert!(pending(&vm, q));
    assert_eq!(vm.u64_at(SHINFO + 8), 0);
    vm.platform.take();
    assert_eq!(op(&vm, 9, &[q]).0, 0);
    assert_eq!(vm.u64_at(SHINFO + 2560), 0);
    assert_eq!(vm.u64_at(SHINFO + 8), 1);
    assert!(vm.platform.take().contains(&Effect::Interrupt(0, VECTOR)));
    assert_eq!(op(&vm, 9, &[5000]).0, e(EINVAL));
    assert_eq!(op(&vm, 11, &[0]).0, e(ENOSYS), "FIFO ABI");
}

#[test]
fn the_singleshot_timer_raises_virq_timer() {
    let vm = vm();
    assert_eq!(op(&vm, 1, &[0, 5, 0]).0, e(ENOENT), "no vCPU 5");
    assert_eq!(op(&vm, 1, &[3, 1, 0]).0, e(EINVAL), "global VIRQ on vCPU 1");
    let (r, out) = op(&vm, 1, &[0, 0, 0]);
    assert_eq!(r, 0);
    let port = out[2];
    assert_eq!(op(&vm, 1, &[0, 0, 0]).0, e(EEXIST));
    vm.platform.set_now(1000);
    // set_timer_op(5000).
    assert_eq!(vm.rax64(15, &[5000]), 0);
    assert_eq!(vm.platform.timer_deadline(0), Some(5000));
    assert_eq!(vm.platform.fire_due(&vm.mem), 0);
    assert!(!pending(&vm, port));
    vm.platform.set_now(5000);
    assert_eq!(vm.platform.fire_due(&vm.mem), 1);
    assert!(pending(&vm, port));
    // A deadline already past fires at once; 0 stops.
    vm.write(SHINFO + 2048, &[0; 8]);
    vm.write(ARG, &[0; 16]);
    assert_eq!(vm.rax64(24, &[8, 0, ARG]), 0);
    assert!(pending(&vm, port));
    assert_eq!(vm.rax64(15, &[9000]), 0);
    assert_eq!(vm.rax64(15, &[0]), 0);
    assert_eq!(vm.platform.timer_deadline(0), None);
}

#[test]
fn poll_returns_at_once_for_a_pending_port_and_block_for_pending_events() {
    let vm = vm();
    let (_, out) = op(&vm, 7, &[0, 0]);
    let ipi = out[1];
    vm.write(SHINFO, &[0; 16]);
    assert_eq!(op(&vm, 4, &[ipi]).0, 0);
    vm.write(ARG + 64, &ipi.to_le_bytes());
    let mut poll = [0u8; 24];
    poll[0..8].copy_from_slice(&(ARG + 64).to_le_bytes());
    poll[8..12].copy_from_slice(&1u32.to_le_bytes());
    vm.write(ARG + 128, &poll);
    assert_eq!(vm.rax64(29, &[3, ARG + 128]), 0, "poll of a pending port");
    // Upcall pending with a vector: block returns at once.
    assert_eq!(vm.rax64(29, &[1, 0]), 0);
    vm.write(SHINFO, &[0; 16]);
    assert_eq!(vm.call64(29, &[1, 0]).next, Next::Halt);
    vm.write(ARG + 64, &5000u32.to_le_bytes());
    assert_eq!(vm.rax64(29, &[3, ARG + 128]), e(EINVAL), "port past the table");
}

/// Binds an IPI port on vCPU 0 and clears what binding raised: (port, its mask word's GPA and
/// bit).
fn ipi_port(vm: &Vm) -> (u32, u64, u64) {
    let (r, out) = op(vm, 7, &[0, 0]);
    assert_eq!(r, 0);
    let ipi = out[1];
    vm.write(SHINFO, &[0; 16]);
    (ipi, SHINFO + 2560 + 8 * u64::from(ipi / 64), 1 << (ipi % 64))
}

/// `SCHEDOP_poll` with no ports and timeout `timeout` on vCPU 0: it halts.
fn timed_poll(vm: &Vm, timeout: u64) {
    let mut poll = [0u8; 24];
    poll[16..24].copy_from_slice(&timeout.to_le_bytes());
    vm.write(ARG + 128, &poll);
    assert_eq!(vm.call64(29, &[3, ARG + 128]).next, Next::Halt);
}

/// Sends on `port` after clearing its pending bit (a send on a pending port raises nothing);
/// returns the effects. Then clears vCPU 0's upcall flags, as its upcall would.
fn send_fresh(vm: &Vm, port: u32) -> Vec<Effect> {
    vm.write(SHINFO + 2048 + 8 * u64::from(port / 64), &[0; 8]);
    vm.platform.take();
    assert_eq!(op(vm, 4, &[port]).0, 0);
    vm.write(SHINFO, &[0; 16]);
    vm.platform.take()
}

#[test]
fn an_event_after_an_ended_poll_does_not_wake_the_next_halt() {
    let vm = vm();
    let (ipi, mask, bit) = ipi_port(&vm);
    vm.write(mask, &bit.to_le_bytes());
    vm.platform.set_now(1_000);
    // While the poll halts, a newly pending port (masked or not) wakes it.
    timed_poll(&vm, 5_000);
    assert_eq!(send_fresh(&vm, ipi), vec![Effect::Wake(0)]);
    // The VMM says the poll's halt ended (its timeout): a later event wakes nothing, so the
    // VMM remembers no wake to end the vCPU's next halt with.
    timed_poll(&vm, 5_000);
    Dispatch::halt_ended(&vm.engine, 0);
    assert_eq!(send_fresh(&vm, ipi), vec![]);
    // The next poll is woken again.
    timed_poll(&vm, 5_000);
    assert_eq!(send_fresh(&vm, ipi), vec![Effect::Wake(0)]);
}

#[test]
fn an_event_after_an_ended_block_does_not_wake_the_next_halt() {
    let vm = vm();
    let (ipi, _, _) = ipi_port(&vm);
    // Blocked: an unmasked event interrupts and wakes it.
    assert_eq!(vm.call64(29, &[1, 0]).next, Next::Halt);
    assert_eq!(send_fresh(&vm, ipi), vec![Effect::Interrupt(0, VECTOR), Effect::Wake(0)]);
    // The block ended (an interrupt) and the VMM said so: the event only interrupts.
    assert_eq!(vm.call64(29, &[1, 0]).next, Next::Halt);
    Dispatch::halt_ended(&vm.engine, 0);
    assert_eq!(send_fresh(&vm, ipi), vec![Effect::Interrupt(0, VECTOR)]);
    // Another vCPU's halt ending leaves vCPU 0's block as it was.
    assert_eq!(vm.call64(29, &[1, 0]).next, Next::Halt);
    Dispatch::halt_ended(&vm.engine, 1);
    assert_eq!(send_fresh(&vm, ipi), vec![Effect::Interrupt(0, VECTOR), Effect::Wake(0)]);
}

fn xs_send(vm: &Vm, bytes: &[u8]) -> Vec<u8> {
    let page = 0xfe000u64;
    let prod = vm.u32_at(page + 2052);
    for (i, b) in bytes.iter().enumerate() {
        vm.write(page + u64::from(prod.wrapping_add(i as u32) & 1023), &[*b]);
    }
    vm.write(page + 2052, &prod.wrapping_add(bytes.len() as u32).to_le_bytes());
    assert_eq!(op(vm, 4, &[1]).0, 0);
    let (c, p) = (vm.u32_at(page + 2056), vm.u32_at(page + 2060));
    let out: Vec<u8> = (c..p).map(|i| vm.read(page + 1024 + u64::from(i & 1023), 1)[0]).collect();
    vm.write(page + 2056, &p.to_le_bytes());
    out
}

#[test]
fn xenstore_answers_through_its_ring() {
    let vm = vm();
    let reply = xs_send(&vm, &encode(msg::XS_READ, 7, 0, b"domid\0"));
    assert_eq!(reply, encode(msg::XS_READ, 7, 0, b"1"));
    let reply = xs_send(&vm, &encode(msg::XS_WATCH, 8, 0, b"data\0tok\0"));
    let mut want = encode(msg::XS_WATCH, 8, 0, b"OK\0");
    want.extend(encode(msg::XS_WATCH_EVENT, 0, 0, b"data\0tok\0"));
    assert_eq!(reply, want);
    let reply = xs_send(&vm, &encode(msg::XS_WRITE, 9, 0, b"data/k\0v1"));
    let mut want = encode(msg::XS_WRITE, 9, 0, b"OK\0");
    want.extend(encode(msg::XS_WATCH_EVENT, 0, 0, b"data/k\0tok\0"));
    assert_eq!(reply, want);
    assert_eq!(vm.u32_at(0xfe000 + layout::REQ_CONS as u64), vm.u32_at(0xfe000 + 2052));
}

#[test]
fn a_bad_xenstore_ring_sets_the_error_field() {
    let vm = vm();
    vm.write(0xfe000 + 2052, &2000u32.to_le_bytes());
    assert_eq!(op(&vm, 4, &[1]).0, 0);
    assert_eq!(vm.u32_at(0xfe000 + layout::ERROR as u64), XENSTORE_ERROR_RINGIDX);
    // Reconnect, then an oversized message.
    vm.write(0xfe000 + layout::CONNECTION as u64, &1u32.to_le_bytes());
    assert_eq!(op(&vm, 4, &[1]).0, 0);
    assert_eq!(vm.u32_at(0xfe000 + layout::ERROR as u64), 0);
    assert_eq!(vm.u32_at(0xfe000 + 2052), 0);
    assert_eq!(
        xs_send(&vm, &encode(msg::XS_READ, 2, 0, b"domid\0")),
        encode(msg::XS_READ, 2, 0, b"1")
    );
    let mut big = encode(msg::XS_WRITE, 1, 0, b"");
    big[12..16].copy_from_slice(&5000u32.to_le_bytes());
    let _ = xs_send(&vm, &big);
    assert_eq!(vm.u32_at(0xfe000 + layout::ERROR as u64), XENSTORE_ERROR_PROTO);
}

#[test]
fn console_output_reaches_the_vm_console_and_input_the_ring() {
    let vm = vm();
    let page = 0xff000u64;
    vm.write(page + 1024, b"hello");
    vm.write(page + 3084, &5u32.to_le_bytes());
    vm.platform.input.lock().unwrap().extend_from_slice(b"in");
    assert_eq!(op(&vm, 4, &[2]).0, 0);
    let effects = vm.platform.take();
    assert!(effects.contains(&Effect::Console(0, b"hello".to_vec())), "{effects:?}");
    assert_eq!(vm.u32_at(page + 3080), 5);
    assert_eq!(vm.read(page, 2), b"in");
    assert_eq!(vm.u32_at(page + 3076), 2);
    assert!(effects.iter().any(|e| matches!(e, Effect::Timer(0x1_0000, Some(_)))));
    // Output indices past the ring: dropped, the ring usable again.
    vm.write(page + 3084, &9000u32.to_le_bytes());
    assert_eq!(op(&vm, 4, &[2]).0, 0);
    assert_eq!(vm.u32_at(page + 3080), 9000);
    assert_eq!(vm.xen().state.console.lock().unwrap().protocol_errors, 1);
    let mut ring = vec![0u8; 4096];
    assert!(ring[..].write(4090, &[0; 6]));
}

#[test]
fn the_callback_vector_serves_vcpus_without_their_own() {
    let vm = vm();
    // HVM_PARAM_CALLBACK_IRQ = type 2 (vector) 0xf5.
    let mut p = [0u8; 16];
    p[0..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    p[8..16].copy_from_slice(&((2u64 << 56) | 0xf5).to_le_bytes());
    vm.write(ARG + 256, &p);
    assert_eq!(vm.rax64(34, &[0, ARG + 256]), 0);
    let (r, out) = op(&vm, 7, &[1, 0]);
    assert_eq!(r, 0);
    let ipi = out[1];
    assert_eq!(op(&vm, 7, &[2, 0]).0, e(ENOENT), "no vCPU 2");
    vm.platform.take();
    assert_eq!(op(&vm, 4, &[ipi]).0, 0);
    // vCPU 1's vcpu_info is shared_info's slot 1.
    assert_eq!(vm.read(SHINFO + 64, 1), [1]);
    assert!(vm.platform.take().contains(&Effect::Interrupt(1, 0xf5)));
    // bind_vcpu moves an interdomain port to another vCPU.
    let (_, out) = op(&vm, 0, &[0, 3, 0]);
    let a = out[2];
    assert_eq!(op(&vm, 8, &[a, 1]).0, 0);
    assert_eq!(op(&vm, 8, &[a, 7]).0, e(ENOENT));
    let (_, st) = op(&vm, 5, &[0x7ff0, a, 0, 0, 0, 0]);
    assert_eq!(st[3], 1, "status shows vCPU 1");
}

#[test]
fn later_host_input_arrives_by_the_poll_timer() {
    let vm = vm();
    let page = 0xff000u64;
    // Input before the guest uses the ring stays for CONSOLEIO_read.
    assert_eq!(vm.platform.timer_deadline(0x1_0000), None);
    assert_eq!(op(&vm, 4, &[2]).0, 0);
    let due = vm.platform.timer_deadline(0x1_0000).expect("the input poll is armed");
    vm.platform.input.lock().unwrap().extend_from_slice(b"late");
    vm.platform.set_now(due);
    assert_eq!(vm.platform.fire_due(&vm.mem), 1);
    assert_eq!(vm.read(page, 4), b"late");
    assert_eq!(vm.u32_at(page + 3076), 4);
    // The console port was raised, and the poll armed again.
    assert!(pending(&vm, 2));
    assert_eq!(vm.platform.timer_deadline(0x1_0000), Some(due + 10_000_000));
}

#[test]
fn closing_a_global_virq_moved_to_another_vcpu_frees_its_binding() {
    use crate::xen::abi::virq::{VIRQ_CONSOLE, VIRQ_TIMER};
    use crate::xen::evtchn::Table;
    let mut t = Table::new(2, 3);
    let port = t.bind_virq(VIRQ_CONSOLE, 0).unwrap();
    t.bind_vcpu(port, 1).unwrap();
    assert_eq!(t.status(port).unwrap().1, 1, "notifies vCPU 1");
    t.close(port).unwrap();
    // evtchn_close clears the VIRQ wherever it is bound: it can be bound again, and a VIRQ
    // sent now finds no port (not the freed one, which a later bind may reuse).
    assert_eq!(t.virq_port(0, VIRQ_CONSOLE), None);
    let again = t.bind_virq(VIRQ_CONSOLE, 0).unwrap();
    assert_eq!(t.virq_port(0, VIRQ_CONSOLE), Some(again));
    // Per-vCPU VIRQs stay on their vCPU.
    let timer = t.bind_virq(VIRQ_TIMER, 1).unwrap();
    assert_eq!(t.bind_vcpu(timer, 0), Err(EINVAL));
}

#[test]
fn bind_virq_checks_the_virq_before_the_vcpu() {
    let vm = vm();
    // evtchn_bind_virq: a VIRQ past NR_VIRQS, or a global VIRQ on a vCPU other than 0, is
    // -EINVAL before the vCPU is looked up (-ENOENT).
    assert_eq!(op(&vm, 1, &[99, 7, 0]).0, e(EINVAL), "bad VIRQ, no such vCPU");
    assert_eq!(op(&vm, 1, &[3, 7, 0]).0, e(EINVAL), "global VIRQ, no such vCPU");
    assert_eq!(op(&vm, 1, &[0, 7, 0]).0, e(ENOENT), "per-vCPU VIRQ, no such vCPU");
}

#[test]
fn the_xenstore_ring_offers_its_features_before_the_first_request() {
    let vm = vm();
    assert_eq!(vm.u32_at(0xfe000 + 2064), 0);
    // HVMOP_get_param(HVM_PARAM_STORE_PFN): how the guest finds the ring.
    let mut p = [0u8; 16];
    p[0..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
    p[4..8].copy_from_slice(&1u32.to_le_bytes());
    vm.write(ARG, &p);
    assert_eq!(vm.rax64(34, &[1, ARG]), 0);
    assert_eq!(vm.u64_at(ARG + 8), 0xfe);
    assert_eq!(vm.u32_at(0xfe000 + 2064), 3, "RECONNECTION | ERROR, as xenstored sets them");
    assert_eq!(vm.u32_at(0xfe000 + 2068), 0, "XENSTORE_CONNECTED");
}

#[test]
fn set_timer_op_turns_a_huge_timeout_into_100_ms() {
    let vm = vm();
    vm.platform.set_now(1000);
    // do_set_timer_op's Linux workaround: a timeout 2^50 ns or more ahead, or negative as
    // an s_time_t, fires in 100 ms instead.
    assert_eq!(vm.rax64(15, &[1000 + (1 << 50)]), 0);
    assert_eq!(vm.platform.timer_deadline(0), Some(1000 + 100_000_000));
    assert_eq!(vm.rax64(15, &[1 << 63]), 0);
    assert_eq!(vm.platform.timer_deadline(0), Some(1000 + 100_000_000));
    assert_eq!(vm.rax64(15, &[1000 + (1 << 50) - 1]), 0);
    assert_eq!(vm.platform.timer_deadline(0), Some(1000 + (1 << 50) - 1));
    // VCPUOP_set_singleshot_timer has no such workaround.
    vm.write(ARG, &[0; 16]);
    vm.write(ARG, &(1000u64 + (1 << 50)).to_le_bytes());
    assert_eq!(vm.rax64(24, &[8, 0, ARG]), 0);
    assert_eq!(vm.platform.timer_deadline(0), Some(1000 + (1 << 50)));
}

#[test]
fn a_port_closed_before_a_late_raise_stays_clear() {
    // A raise that looked the port up before a close on another thread ran, delivered after
    // it: the raise checks the binding again under the table's lock and drops the event.
    let vm = vm();
    let (_, out) = op(&vm, 7, &[0, 0]);
    let ipi = out[1];
    assert_eq!(op(&vm, 3, &[ipi]).0, 0);
    vm.platform.take();
    let st = &vm.xen().state;
    crate::xen::evtchn::raise(st, &vm.mem, &vm.platform, ipi);
    assert!(!pending(&vm, ipi), "a closed port was left pending");
    assert!(!vm.platform.take().iter().any(|e| matches!(e, Effect::Interrupt(..))));
    // The console backend's raise after the guest closed the console port: nothing either.
    assert_eq!(op(&vm, 3, &[2]).0, 0);
    crate::xen::evtchn::raise_backend(st, &vm.mem, &vm.platform, 2);
    assert!(!pending(&vm, 2));
    // A bound port is still raised.
    let (_, out) = op(&vm, 7, &[0, 0]);
    crate::xen::evtchn::raise(st, &vm.mem, &vm.platform, out[1]);
    assert!(pending(&vm, out[1]));
}

#[test]
fn a_stale_singleshot_callback_does_not_fire() {
    // The timer thread took the callback for deadline 5000 off its list; before it ran, the
    // vCPU stopped the timer, then armed it for later. The old callback must not raise
    // VIRQ_TIMER: only the armed deadline's callback does.
    let vm = vm();
    let (_, out) = op(&vm, 1, &[0, 0, 0]);
    let port = out[2];
    vm.platform.set_now(1000);
    assert_eq!(vm.rax64(15, &[5000]), 0);
    let stale = vm.platform.timers.lock().unwrap()[0].fire.clone();
    assert_eq!(vm.rax64(15, &[0]), 0);
    stale(&vm.platform, &vm.mem);
    assert!(!pending(&vm, port), "a stopped timer fired");
    assert_eq!(vm.rax64(15, &[9000]), 0);
    stale(&vm.platform, &vm.mem);
    assert!(!pending(&vm, port), "a re-armed timer fired at its old deadline");
    vm.platform.set_now(9000);
    assert_eq!(vm.platform.fire_due(&vm.mem), 1);
    assert!(pending(&vm, port));
}

#[test]
fn console_input_is_held_while_the_console_port_is_closed() {
    let vm = vm();
    let page = 0xff000u64;
    assert_eq!(op(&vm, 4, &[2]).0, 0);
    let due = vm.platform.timer_deadline(0x1_0000).expect("the input poll is armed");
    // The guest closes its console port: the next poll moves nothing and stops.
    assert_eq!(op(&vm, 3, &[2]).0, 0);
    vm.platform.input.lock().unwrap().extend_from_slice(b"held");
    vm.platform.set_now(due);
    assert_eq!(vm.platform.fire_due(&vm.mem), 1);
    assert_eq!(vm.u32_at(page + 3076), 0, "input went into the ring of a closed port");
    assert_eq!(*vm.platform.input.lock().unwrap(), b"held", "kept for CONSOLEIO_read");
    assert_eq!(vm.platform.timer_deadline(0x1_0000), None, "the poll stopped");
    // Bound again and notified: the input comes in and the poll runs again.
    let (r, out) = op(&vm, 0, &[0, 2, 0]);
    assert_eq!(r, 0);
    assert_eq!(op(&vm, 4, &[out[2]]).0, 0);
    assert_eq!(vm.read(page, 4), b"held");
    assert_eq!(vm.u32_at(page + 3076), 4);
    assert!(vm.platform.timer_deadline(0x1_0000).is_some());
}
