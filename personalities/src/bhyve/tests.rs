//! Engine-level tests: register snapshots in, outcomes and effects out, through the same
//! `Engine` and `Dispatch` the VMM drives.

use polyvisor_config::{BhyveLeaf, Config, Selector};
use polyvisor_core::testing::{memory, snapshot, Effect, RecordedProbe, RecordingPlatform};
use polyvisor_core::{
    CallSelector, CpuMode, Dispatch, Engine, Exception, Gpr, GuestMemoryMmap, HypercallInstruction,
    Next, Outcome, Registers, VcpuSnapshot,
};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use super::abi::*;
use super::cpuid::CPUID_BHYVE_FEAT_EXT_DEST_ID;
use super::*;
use crate::HostFacts;

const MEM: usize = 0x10000;
const NAME_AT: u64 = 0x1000;
const ARGS_AT: u64 = 0x2000;

fn config(enabled: bool) -> Config {
    let mut c = Config::default();
    c.hypervisor.hypercalls_enabled = enabled;
    c
}

fn engine(c: &Config) -> Engine<Bhyve> {
    Bhyve::engine(c).unwrap()
}

fn enabled() -> Engine<Bhyve> {
    engine(&config(true))
}

/// A vCPU about to make call `rax` with `rdi`, `rsi`, `rdx`.
fn vcpu(rax: u64, rdi: u64, rsi: u64, rdx: u64) -> VcpuSnapshot {
    snapshot(Registers { rax, rdi, rsi, rdx, rip: 0x1_0000, ..Default::default() })
}

fn at(mut v: VcpuSnapshot, cpl: u8) -> VcpuSnapshot {
    v.cpl = cpl;
    v
}

fn both_instructions(v: VcpuSnapshot) -> [VcpuSnapshot; 2] {
    let mut a = v;
    a.instruction = HypercallInstruction::Vmcall;
    let mut b = v;
    b.instruction = HypercallInstruction::Vmmcall;
    [a, b]
}

fn run(e: &Engine<Bhyve>, v: &VcpuSnapshot, mem: &GuestMemoryMmap) -> (Outcome, Vec<Effect>) {
    let platform = RecordingPlatform::new(2);
    let o = e.hypercall(v, mem, &platform);
    (o, platform.take())
}

fn ud() -> Outcome {
    Outcome::inject(Exception::InvalidOpcode)
}

fn ok() -> Outcome {
    Outcome::ret(Gpr::Rax, 0)
}

fn err() -> Outcome {
    Outcome::ret(Gpr::Rax, 1)
}

/// PROBE_CREATE's success: RAX = SUCCESS, RDI = id, RIP advanced.
fn created(id: u64) -> Outcome {
    let mut o = ok();
    o.writes.push(Gpr::Rdi, id);
    o
}

fn put_name(mem: &GuestMemoryMmap, at: u64, name: &[u8]) {
    mem.write_slice(name, GuestAddress(at)).unwrap();
}

fn create(e: &Engine<Bhyve>, mem: &GuestMemoryMmap, name: &str) -> Outcome {
    put_name(mem, NAME_AT, name.as_bytes());
    run(e, &vcpu(HYPERCALL_DTRACE_PROBE_CREATE, NAME_AT, name.len() as u64, 0), mem).0
}

fn put_args(mem: &GuestMemoryMmap, at: u64, args: [u64; 5]) {
    for (i, a) in args.iter().enumerate() {
        mem.write_obj(*a, GuestAddress(at + 8 * i as u64)).unwrap();
    }
}

// ---------------------------------------------------------------- build and identity

#[test]
fn build_gives_a_bhyve_engine_with_the_review_leaf() {
    let d = crate::build(&config(true), &HostFacts::nominal()).unwrap();
    assert_eq!(d.mode(), HypervisorMode::Bhyve);
    let leaves = d.cpuid(0);
    assert_eq!(leaves[0], CpuidLeaf::signature(0x4000_0000, 0x4000_0001, b"bhyve bhyve "));
    assert_eq!(leaves[1], CpuidLeaf::new(0x4000_0001, 1, 0, 0, 0));
    assert_eq!(d.cpuid(1), leaves, "every vCPU sees the same");
    assert!(d.msr_ranges().is_empty(), "bhyve has no synthetic MSRs");
    assert!(d.explain_cpuid(&leaves[1]).join(" ").contains("EXT_DEST_ID"));
    let d = crate::build(&Config::default(), &HostFacts::nominal()).unwrap();
    assert_eq!(d.cpuid(0)[1], CpuidLeaf::new(0x4000_0001, 0, 0, 0, 0), "disabled by default");
}

#[test]
fn rows_show_rings_and_policy() {
    let rows = enabled().rows();
    assert_eq!(rows.len(), 7);
    assert_eq!((rows[0].name, rows[0].rings.as_str()), ("HYPERCALL_PROTOTYPE", "0,3"));
    assert!(rows.iter().skip(1).all(|r| r.rings == "0"));
    assert!(rows.iter().all(|r| r.permitted));
    assert!(engine(&Config::default()).rows().iter().all(|r| !r.permitted));
}

#[test]
fn a_policy_naming_an_unknown_call_is_a_build_error() {
    let mut c = config(true);
    c.hypervisor.deny = vec![Selector(CallSelector::Name("KVM_HC_SEND_IPI".into()))];
    let e = crate::build(&c, &HostFacts::nominal()).err().unwrap();
    assert!(e.to_string().contains("HYPERCALL_DTRACE_PROBE_CREATE"), "{e}");
}

// ---------------------------------------------------------------- policy answers

#[test]
fn disabled_by_default_every_call_is_ud() {
    let e = engine(&Config::default());
    let mem = memory(MEM);
    for number in [0, 1, 2, 3, 6, 7, 0xffff_ffff, u64::MAX] {
        for cpl in [0, 3] {
            for v in both_instructions(at(vcpu(number, NAME_AT, 4, 0), cpl)) {
                assert_eq!(run(&e, &v, &mem), (ud(), vec![]), "number {number} cpl {cpl}");
            }
        }
    }
    assert_eq!(e.refusals().snapshot().0, 32);
}

#[test]
fn freebsd15_leaf_shows_ext_dest_id_and_refuses_every_call() {
    let mut c = config(true);
    c.bhyve.cpuid_leaf = BhyveLeaf::Freebsd15;
    let e = engine(&c);
    assert!(!e.enabled(), "hypercalls_possible() is false");
    assert_eq!(e.cpuid(0)[1], CpuidLeaf::new(0x4000_0001, CPUID_BHYVE_FEAT_EXT_DEST_ID, 0, 0, 0));
    let mem = memory(MEM);
    for number in 0..HYPERCALL_INDEX_MAX {
        for v in both_instructions(vcpu(number, 0, 0, 0)) {
            assert_eq!(run(&e, &v, &mem).0, ud(), "number {number}");
        }
    }
}

#[test]
fn prototype_succeeds_from_rings_0_and_3_with_either_instruction() {
    let e = enabled();
    let mem = memory(MEM);
    for cpl in [0, 3] {
        for v in both_instructions(at(vcpu(HYPERCALL_PROTOTYPE, 5, 6, 7), cpl)) {
            let (o, effects) = run(&e, &v, &mem);
            assert_eq!(o, ok(), "cpl {cpl} {}", v.instruction);
            assert_eq!(o.next, Next::Advance);
            assert!(effects.is_empty());
        }
    }
    assert_eq!(e.rows()[0].counters.calls, 4);
}

#[test]
fn rings_1_and_2_are_not_rings_0_or_3() {
    let e = enabled();
    let mem = memory(MEM);
    for cpl in [1, 2] {
        assert_eq!(run(&e, &at(vcpu(HYPERCALL_PROTOTYPE, 0, 0, 0), cpl), &mem).0, err());
    }
}

#[test]
fn dtrace_calls_from_ring_3_get_error_without_a_fault_or_an_effect() {
    let e = enabled();
    let mem = memory(MEM);
    put_name(&mem, NAME_AT, b"p");
    for number in [HYPERCALL_DTRACE_PROBE_CREATE, HYPERCALL_DTRACE_PROBE] {
        for v in both_instructions(at(vcpu(number, NAME_AT, 1, 0), 3)) {
            let (o, effects) = run(&e, &v, &mem);
            assert_eq!(o, err(), "number {number}");
            assert_eq!(o.next, Next::Advance, "RIP moves on");
            assert!(effects.is_empty());
        }
    }
    let rows = e.rows();
    assert_eq!((rows[1].counters.wrong_ring, rows[1].counters.calls), (2, 0));
    assert_eq!((rows[2].counters.wrong_ring, rows[2].counters.calls), (2, 0));
    assert!(e.personality().probe_counts().is_empty(), "ring 3 created nothing");
}

/// The ring rules for every caller the guests can be: 64-bit and 32-bit protected mode (and
/// real mode, which has no rings), either instruction, every CPL, every row. PROTOTYPE answers
/// SUCCESS from rings 0 and 3, the DTrace rows answer ERROR outside ring 0 (no fault, RIP
/// advanced, RDI untouched, nothing created or recorded), the reserved rows answer ERROR
/// outside ring 0 and #UD in it.
#[test]
fn ring_rules_hold_in_every_mode_with_either_instruction() {
    let mem = memory(MEM);
    put_name(&mem, NAME_AT, b"ring");
    put_args(&mem, ARGS_AT, [1, 2, 3, 4, 5]);
    for mode in [CpuMode::Long64, CpuMode::Protected32, CpuMode::Real] {
        let e = enabled();
        for cpl in 0..4u8 {
            let ring = if mode == CpuMode::Real { 0 } else { cpl };
            for number in HYPERCALL_PROTOTYPE..HYPERCALL_INDEX_MAX {
                let (a0, a1) = match number {
                    HYPERCALL_DTRACE_PROBE_CREATE => (NAME_AT, 4),
                    HYPERCALL_DTRACE_PROBE => (1, ARGS_AT),
                    _ => (0, 0),
                };
                for mut v in both_instructions(at(vcpu(number, a0, a1, 7), cpl)) {
                    v.mode = mode;
                    let (o, effects) = run(&e, &v, &mem);
                    let what = format!("{mode} CPL {cpl} {} number {number}", v.instruction);
                    let allowed = ring == 0 || (ring == 3 && number == HYPERCALL_PROTOTYPE);
                    if !allowed {
                        assert_eq!(o, err(), "{what}");
                        assert_eq!(o.next, Next::Advance, "{what}");
                        assert!(effects.is_empty(), "{what}");
                    } else if number >= HYPERCALL_DTRACE_RESERVED1 {
                        assert_eq!(o, ud(), "{what}");
                    } else if number == HYPERCALL_DTRACE_PROBE_CREATE {
                        assert_eq!(o, created(1), "{what}");
                    } else {
                        assert_eq!(o, ok(), "{what}");
                    }
                }
            }
        }
        // Ring 0 (real mode: every CPL) created the one probe and fired it; ring 3 nothing.
        let fired = if mode == CpuMode::Real { 8 } else { 2 };
        assert_eq!(e.personality().probe_counts(), vec![(1, "ring".to_string(), fired)], "{mode}");
        let rows = e.rows();
        let wrong = if mode == CpuMode::Real { 0 } else { 6 };
        assert_eq!(rows[0].counters.wrong_ring, if mode == CpuMode::Real { 0 } else { 4 });
        for row in &rows[1..] {
            assert_eq!(row.counters.wrong_ring, wrong, "{mode} {}", row.name);
        }
    }
}

#[test]
fn reserved_rows_are_ud_from_ring_0_and_error_from_ring_3() {
    let e = enabled();
    let mem = memory(MEM);
    for number in HYPERCALL_DTRACE_RESERVED1..=HYPERCALL_DTRACE_RESERVED4 {
        for v in both_instructions(vcpu(number, 0, 0, 0)) {
            assert_eq!(run(&e, &v, &mem).0, ud(), "number {number}");
        }
        // The ring is checked before the handler's existence, as in the author's
        // vm_handle_hypercall.
        assert_eq!(run(&e, &at(vcpu(number, 0, 0, 0), 3), &mem).0, err(), "number {number}");
    }
}

#[test]
fn numbers_from_index_max_up_are_ud() {
    let e = enabled();
    let mem = memory(MEM);
    for number in [HYPERCALL_INDEX_MAX, 8, 0x100, 0x1_0000_0000, i64::MAX as u64, u64::MAX] {
        for cpl in [0, 3] {
            for v in both_instructions(at(vcpu(number, 0, 0, 0), cpl)) {
                assert_eq!(run(&e, &v, &mem).0, ud(), "number {number:#x}");
            }
        }
    }
    assert_eq!(e.refusals().snapshot().1, 24);
}

#[test]
fn calls_denied_by_the_configuration_are_ud() {
    let mut c = config(true);
    c.hypervisor.deny = vec![
        Selector(CallSelector::Name("hypercall_dtrace_probe".into())),
        Selector(CallSelector::Number(1)),
    ];
    let e = engine(&c);
    let mem = memory(MEM);
    put_name(&mem, NAME_AT, b"p");
    assert_eq!(run(&e, &vcpu(HYPERCALL_PROTOTYPE, 0, 0, 0), &mem).0, ok());
    assert_eq!(run(&e, &vcpu(HYPERCALL_DTRACE_PROBE_CREATE, NAME_AT, 1, 0), &mem).0, ud());
    assert_eq!(run(&e, &vcpu(HYPERCALL_DTRACE_PROBE, 1, ARGS_AT, 0), &mem).0, ud());
    // Denial is checked before the ring: ring 3 gets #UD too, not ERROR.
    assert_eq!(run(&e, &at(vcpu(HYPERCALL_DTRACE_PROBE, 1, ARGS_AT, 0), 3), &mem).0, ud());
    assert_eq!(e.rows()[1].counters.denied, 1);

    let mut c = config(true);
    c.hypervisor.allow = Some(vec![Selector(CallSelector::Name("HYPERCALL_PROTOTYPE".into()))]);
    let e = engine(&c);
    assert_eq!(run(&e, &vcpu(HYPERCALL_PROTOTYPE, 0, 0, 0), &mem).0, ok());
    assert_eq!(run(&e, &vcpu(HYPERCALL_DTRACE_PROBE_CREATE, NAME_AT, 1, 0), &mem).0, ud());
}

// ---------------------------------------------------------------- 32-bit callers

#[test]
fn thirty_two_bit_callers_see_eax_and_truncated_results() {
    let e = enabled();
    let mem = memory(MEM);
    let mut v = vcpu(0xffff_ffff_0000_0000 | HYPERCALL_PROTOTYPE, 0, 0, 0);
    assert_eq!(run(&e, &v, &mem).0, ud(), "64-bit: the whole RAX is the number");
    v.mode = CpuMode::Protected32;
    assert_eq!(run(&e, &v, &mem).0, ok(), "32-bit: EAX is the number");
    v.mode = CpuMode::Real;
    v.cpl = 3; // real mode has no rings
    assert_eq!(run(&e, &v, &mem).0, ok());

    put_name(&mem, NAME_AT, b"probe32");
    let mut v = vcpu(
        0x7777_0000_0000_0000 | HYPERCALL_DTRACE_PROBE_CREATE,
        0xdead_beef_0000_0000 | NAME_AT,
        0x1_0000_0000 | 7,
        0,
    );
    v.mode = CpuMode::Protected32;
    v.regs.r8 = u64::MAX; // not a register a 32-bit caller has; must not matter
    let (o, _) = run(&e, &v, &mem);
    assert_eq!(o, created(1));
    assert_eq!(e.personality().probe_counts(), vec![(1, "probe32".to_string(), 0)]);

    put_args(&mem, ARGS_AT, [1, 2, 3, 4, 5]);
    let mut v = vcpu(
        HYPERCALL_DTRACE_PROBE,
        0xffff_ffff_0000_0001,
        0xffff_0000_0000_0000 | ARGS_AT,
        0xabcd_0000_0000_0042,
    );
    v.mode = CpuMode::Protected32;
    let (o, effects) = run(&e, &v, &mem);
    assert_eq!(o, ok());
    assert_eq!(effects, vec![Effect::Probe(1, "probe32".into(), [1, 2, 3, 4, 5], 0x42, 0)]);
}

// ---------------------------------------------------------------- PROBE_CREATE

#[test]
fn probe_create_returns_success_in_rax_and_the_id_in_rdi() {
    let e = enabled();
    let mem = memory(MEM);
    for v in both_instructions(vcpu(HYPERCALL_DTRACE_PROBE_CREATE, NAME_AT, 9, 0)) {
        put_name(&mem, NAME_AT, b"io::start");
        let (o, effects) = run(&e, &v, &mem);
        assert_eq!(o, created(1), "the same name twice is the same probe");
        assert_eq!(o.next, Next::Advance);
        assert!(effects.is_empty());
    }
    assert_eq!(create(&e, &mem, "io::done"), created(2));
    assert_eq!(create(&e, &mem, "io::start"), created(1));
    assert_eq!(
        e.personality().probe_counts(),
        vec![(1, "io::start".to_string(), 0), (2, "io::done".to_string(), 0)]
    );
    assert_eq!(e.rows()[1].counters.calls, 4);
    assert_eq!(e.rows()[1].counters.errors, 0);
}

#[test]
fn probe_create_refuses_bad_pointers_and_names_with_error() {
    let e = enabled();
    let mem = memory(MEM);
    put_name(&mem, NAME_AT, b"ok\xff\xfeno\0x\x1b");
    put_name(&mem, 0x3000, &[b'a'; 200]);
    put_name(&mem, 0, b"null"); // readable: only the NULL check refuses it
    let end = MEM as u64;
    let cases: &[(&str, u64, u64)] = &[
        ("past the end of memory", end, 4),
        ("far past the end", 0x4000_0000, 4),
        ("straddling the end", end - 2, 4),
        ("wrapping the address space", u64::MAX - 1, 4),
        ("null pointer", 0, 4),
        ("zero length", NAME_AT, 0),
        ("too long", 0x3000, 129),
        ("absurdly long", 0x3000, u64::MAX),
        ("invalid UTF-8", NAME_AT, 4),
        ("NUL inside", NAME_AT + 4, 4),
        ("control character", NAME_AT + 7, 2),
    ];
    for (what, ptr, len) in cases {
        let (o, effects) = run(&e, &vcpu(HYPERCALL_DTRACE_PROBE_CREATE, *ptr, *len, 0), &mem);
        assert_eq!(o, err(), "{what}");
        assert!(o.writes.get(Gpr::Rdi).is_none(), "{what}: RDI untouched");
        assert!(effects.is_empty());
    }
    assert!(e.personality().probe_counts().is_empty());
    assert_eq!(e.rows()[1].counters.errors, cases.len() as u64);
    // The bound itself is accepted.
    let (o, _) = run(&e, &vcpu(HYPERCALL_DTRACE_PROBE_CREATE, 0x3000, 128, 0), &mem);
    assert_eq!(o, created(1));
    put_name(&mem, end - 3, b"end");
    let (o, _) = run(&e, &vcpu(HYPERCALL_DTRACE_PROBE_CREATE, end - 3, 3, 0), &mem);
    assert_eq!(o, created(2), "a name that ends exactly at the end of memory");
}

#[test]
fn the_4097th_probe_is_refused() {
    let e = enabled();
    let mem = memory(MEM);
    for i in 1..=4096 {
        assert_eq!(create(&e, &mem, &format!("p{i}")), created(i));
    }
    assert_eq!(create(&e, &mem, "one more"), err());
    assert_eq!(create(&e, &mem, "p4096"), created(4096), "existing names still resolve");
    assert_eq!(e.personality().probe_counts().len(), MAX_PROBES);
    // And every probe can still fire.
    put_args(&mem, ARGS_AT, [0; 5]);
    assert_eq!(run(&e, &vcpu(HYPERCALL_DTRACE_PROBE, 4096, ARGS_AT, 1), &mem).0, ok());
}

// ---------------------------------------------------------------- PROBE

#[test]
fn probe_reads_its_args_through_the_pointer_and_records_the_event() {
    let e = enabled();
    let mem = memory(MEM);
    assert_eq!(create(&e, &mem, "syscall::read:entry"), created(1));
    assert_eq!(create(&e, &mem, "syscall::read:return"), created(2));
    put_args(&mem, ARGS_AT, [10, 20, 30, 0xffff_ffff_ffff_fff0, 50]);

    let platform = RecordingPlatform::new(4).at(1_000);
    let mut v = vcpu(HYPERCALL_DTRACE_PROBE, 2, ARGS_AT, 100_123);
    v.vcpu = 3;
    v.regs.rcx = 0xdead; // not an argument of PROBE
    assert_eq!(e.hypercall(&v, &mem, &platform), ok());
    platform.set_now(2_500);
    v.instruction = HypercallInstruction::Vmmcall;
    v.vcpu = 0;
    assert_eq!(e.hypercall(&v, &mem, &platform), ok());
    let name = "syscall::read:return".to_string();
    let args = [10, 20, 30, 0xffff_ffff_ffff_fff0, 50];
    let probe = |vcpu, timestamp_ns| RecordedProbe {
        probe_id: 2,
        name: name.clone(),
        args,
        thread: 100_123,
        vcpu,
        timestamp_ns,
    };
    assert_eq!(platform.take_probes(), vec![probe(3, 1_000), probe(0, 2_500)]);
    assert_eq!(
        e.personality().probe_counts(),
        vec![(1, "syscall::read:entry".to_string(), 0), (2, "syscall::read:return".to_string(), 2)]
    );
}

#[test]
fn probe_with_an_unknown_id_or_bad_args_pointer_is_error_and_records_nothing() {
    let e = enabled();
    let mem = memory(MEM);
    assert_eq!(create(&e, &mem, "p"), created(1));
    put_args(&mem, ARGS_AT, [1; 5]);
    put_args(&mem, 0, [1; 5]); // readable: only the NULL check refuses it
    let end = MEM as u64;
    let cases: &[(&str, u64, u64)] = &[
        ("DTRACE_IDNONE", 0, ARGS_AT),
        ("never created", 2, ARGS_AT),
        ("beyond the limit", MAX_PROBES as u64 + 1, ARGS_AT),
        ("huge id", u64::MAX, ARGS_AT),
        ("null args", 1, 0),
        ("args past the end", 1, end),
        ("args straddling the end", 1, end - 39),
        ("args wrapping", 1, u64::MAX - 7),
    ];
    for (what, id, ptr) in cases {
        let (o, effects) = run(&e, &vcpu(HYPERCALL_DTRACE_PROBE, *id, *ptr, 7), &mem);
        assert_eq!(o, err(), "{what}");
        assert!(effects.is_empty(), "{what}");
    }
    assert_eq!(e.personality().probe_counts(), vec![(1, "p".to_string(), 0)]);
    assert_eq!(e.rows()[2].counters.errors, cases.len() as u64);
    let (o, effects) = run(&e, &vcpu(HYPERCALL_DTRACE_PROBE, 1, end - 40, 7), &mem);
    assert_eq!(o, ok(), "args ending exactly at the end of memory");
    assert_eq!(effects, vec![Effect::Probe(1, "p".into(), [0; 5], 7, 0)]);
}

#[test]
fn counts_reach_the_vmm_through_dispatch_report() {
    let e = enabled();
    let mem = memory(MEM);
    assert!(Dispatch::report(&e).is_empty(), "no probes, nothing to say");
    assert_eq!(create(&e, &mem, "a:b:c:d"), created(1));
    assert_eq!(create(&e, &mem, "second"), created(2));
    put_args(&mem, ARGS_AT, [0; 5]);
    for _ in 0..3 {
        assert_eq!(run(&e, &vcpu(HYPERCALL_DTRACE_PROBE, 1, ARGS_AT, 0), &mem).0, ok());
    }
    let d: std::sync::Arc<dyn Dispatch> = std::sync::Arc::new(e);
    assert_eq!(
        d.report(),
        vec![
            "bhyve: 2 guest DTrace probes created, 1 fired".to_string(),
            "bhyve probe 1 \"a:b:c:d\": fired 3 times".to_string(),
        ]
    );
}

#[test]
fn probe_ids_are_per_vm() {
    let (a, b) = (enabled(), enabled());
    let mem = memory(MEM);
    assert_eq!(create(&a, &mem, "x"), created(1));
    assert_eq!(create(&b, &mem, "y"), created(1));
    assert_eq!(b.personality().probe_counts(), vec![(1, "y".to_string(), 0)]);
}

// ---------------------------------------------------------------- hostile registers

fn any_mode() -> impl Strategy<Value = CpuMode> {
    prop_oneof![Just(CpuMode::Long64), Just(CpuMode::Protected32), Just(CpuMode::Real)]
}

fn any_instruction() -> impl Strategy<Value = HypercallInstruction> {
    prop_oneof![Just(HypercallInstruction::Vmcall), Just(HypercallInstruction::Vmmcall)]
}

fn small_or_any() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..16, 0u64..(MEM as u64 + 64), any::<u64>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the registers, the answer is #UD or a completed call with RAX in {0, 1}
    /// (and, for PROBE_CREATE only, an id in RDI), and nothing panics.
    #[test]
    fn any_registers_get_an_abi_answer(
        rax in small_or_any(), rdi in small_or_any(), rsi in small_or_any(),
        rdx: u64, rcx: u64, r8: u64, r9: u64, cpl in 0u8..4,
        mode in any_mode(), instruction in any_instruction(), noise: [u8; 32],
        on: bool,
    ) {
        let e = engine(&config(on));
        let mem = memory(MEM);
        for (i, chunk) in (0..MEM as u64).step_by(0x1000).enumerate() {
            mem.write_slice(&noise, GuestAddress(chunk + (i as u64 % 7) * 16)).unwrap();
        }
        let mut v = snapshot(Registers { rax, rdi, rsi, rdx, rcx, r8, r9, ..Default::default() });
        v.cpl = cpl;
        v.mode = mode;
        v.instruction = instruction;
        let platform = RecordingPlatform::new(1);
        let o = e.hypercall(&v, &mem, &platform);
        match o.next {
            Next::Inject(Exception::InvalidOpcode) => prop_assert!(o.writes.is_empty()),
            Next::Advance => {
                prop_assert!(on);
                let status = o.writes.get(Gpr::Rax);
                prop_assert!(matches!(status, Some(0) | Some(1)), "{:?}", o);
                for (reg, value) in o.writes.iter() {
                    prop_assert!(reg == Gpr::Rax || reg == Gpr::Rdi, "{:?}", o);
                    prop_assert!(reg != Gpr::Rdi || (1..=MAX_PROBES as u64).contains(&value));
                }
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
