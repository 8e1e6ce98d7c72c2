//! Hyper-V's calls and MSRs in a trace, in the TLFS's terms: the call code's name, the input
//! value's fast bit, variable header and rep range, the flush flags and IPI vector by name,
//! results as `HV_STATUS_*` with the reps completed.

use polyvisor_core::{CallTrace, CpuMode, Gpr, GuestMemoryMmap, Next, Outcome, VcpuSnapshot};
use vm_memory::{Bytes, GuestAddress};

use super::abi::*;
use super::calls::TABLE;
use super::codec::{read_input, Control};

/// The HV_STATUS codes this implementation answers (TLFS "Hypercall Status Codes").
const STATUS: &[(u16, &str)] = &[
    (HV_STATUS_SUCCESS, "HV_STATUS_SUCCESS"),
    (HV_STATUS_INVALID_HYPERCALL_CODE, "HV_STATUS_INVALID_HYPERCALL_CODE"),
    (HV_STATUS_INVALID_HYPERCALL_INPUT, "HV_STATUS_INVALID_HYPERCALL_INPUT"),
    (HV_STATUS_INVALID_ALIGNMENT, "HV_STATUS_INVALID_ALIGNMENT"),
    (HV_STATUS_INVALID_PARAMETER, "HV_STATUS_INVALID_PARAMETER"),
    (HV_STATUS_ACCESS_DENIED, "HV_STATUS_ACCESS_DENIED"),
    (HV_STATUS_OPERATION_DENIED, "HV_STATUS_OPERATION_DENIED"),
    (HV_STATUS_INSUFFICIENT_BUFFERS, "HV_STATUS_INSUFFICIENT_BUFFERS"),
    (HV_STATUS_NO_DATA, "HV_STATUS_NO_DATA"),
];

/// The HV_FLUSH_* flags (TLFS HvCallFlushVirtualAddressSpace), shown without the prefix.
const FLUSH_FLAGS: &[(u64, &str)] = &[
    (HV_FLUSH_ALL_PROCESSORS, "ALL_PROCESSORS"),
    (HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES, "ALL_VIRTUAL_ADDRESS_SPACES"),
    (HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY, "NON_GLOBAL_MAPPINGS_ONLY"),
    (HV_FLUSH_USE_EXTENDED_RANGE_FORMAT, "USE_EXTENDED_RANGE_FORMAT"),
];

/// The qword at `offset` of a slow call's input block, if it is guest memory.
fn input_word(memory: &GuestMemoryMmap, gpa: u64, offset: u64) -> Option<u64> {
    memory.read_obj::<u64>(GuestAddress(gpa.checked_add(offset)?)).ok()
}

/// Flags by name, unknown bits in hex; `0` for none.
fn flags(value: u64) -> String {
    let mut parts: Vec<String> = FLUSH_FLAGS
        .iter()
        .filter(|(bit, _)| value & bit != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let rest = FLUSH_FLAGS.iter().fold(value, |v, (bit, _)| v & !bit);
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "0".to_string()
    } else {
        parts.join("|")
    }
}

/// An HV_VP_SET's format by name.
fn vp_set_format(format: u64) -> String {
    match format {
        HV_GENERIC_SET_SPARSE_4K => "HV_GENERIC_SET_SPARSE_4K".to_string(),
        HV_GENERIC_SET_ALL => "HV_GENERIC_SET_ALL".to_string(),
        other => polyvisor_core::trace::num(other),
    }
}

/// The call in `vcpu`'s registers. Read from the registers directly, so calls the decoder
/// refuses (CPL 3, hypercall page off) are named too; a slow call's input block is read
/// where the fields this trace shows live.
pub(super) fn call(vcpu: &VcpuSnapshot, memory: &GuestMemoryMmap) -> CallTrace {
    let input = read_input(vcpu);
    let [raw, gpa_in, gpa_out, ..] = input.args;
    let control = Control(raw);
    let code = control.code();
    let name = polyvisor_core::trace::row_name(TABLE, input.number);
    let mut c = CallTrace::new(input.number, name.unwrap_or(polyvisor_core::trace::UNKNOWN));
    if control.fast() {
        c = c.item("fast");
    }
    if control.rep_count() != 0 || control.rep_start() != 0 {
        c = c.item(format_args!("rep {}/{}", control.rep_start(), control.rep_count()));
    }
    if control.var_header() != 0 {
        c = c.arg("varhead", control.var_header());
    }
    if control.reserved() {
        c = c.hex("control", raw);
    }
    // Fast calls pass the block's first two qwords in RDX and R8 (TLFS "Register Mapping for
    // Hypercall Inputs"); slow calls point RDX at it.
    let word = |i: u64| match (control.fast(), i) {
        (true, 0) => Some(gpa_in),
        (true, 1) => Some(gpa_out),
        (true, _) => None,
        (false, _) => input_word(memory, gpa_in, 8 * i),
    };
    let shown = |c: CallTrace, name: &str, v: Option<u64>, f: &dyn Fn(u64) -> String| match v {
        Some(v) => c.arg(name, f(v)),
        None => c,
    };
    let hex = |v: u64| format!("{v:#x}");
    match code {
        HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE | HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST => {
            let c = shown(c, "address_space", word(0), &hex);
            let c = shown(c, "flags", word(1), &flags);
            shown(c, "processor_mask", word(2), &hex)
        }
        HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX | HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX => {
            let c = shown(c, "address_space", word(0), &hex);
            let c = shown(c, "flags", word(1), &flags);
            shown(c, "vp_set", word(2), &vp_set_format)
        }
        HVCALL_SEND_IPI => {
            let c = shown(c, "vector", word(0).map(|w| w & 0xffff_ffff), &hex);
            shown(c, "processor_mask", word(1), &hex)
        }
        HVCALL_SEND_IPI_EX => {
            let c = shown(c, "vector", word(0).map(|w| w & 0xffff_ffff), &hex);
            shown(c, "vp_set", word(1), &vp_set_format)
        }
        HVCALL_NOTIFY_LONG_SPIN_WAIT => {
            shown(c, "retry_count", word(0), &polyvisor_core::trace::num)
        }
        HVCALL_POST_DEBUG_DATA | HVCALL_RETRIEVE_DEBUG_DATA => {
            let c =
                shown(c, "count", word(0).map(|w| w & 0xffff_ffff), &polyvisor_core::trace::num);
            c.hex("output", gpa_out)
        }
        HVCALL_SIGNAL_EVENT if control.fast() => c.num("connection_id", gpa_in & 0xffff_ffff),
        _ if control.fast() => c.hex("in0", gpa_in).hex("in1", gpa_out),
        _ => c.hex("input", gpa_in).hex("output", gpa_out),
    }
}

/// The result value: RAX in 64-bit mode, EDX:EAX in 32-bit mode.
fn result_value(vcpu: &VcpuSnapshot, outcome: &Outcome) -> Option<u64> {
    if vcpu.mode == CpuMode::Long64 {
        outcome.writes.get(Gpr::Rax)
    } else {
        let lo = outcome.writes.get(Gpr::Rax)?;
        Some(outcome.writes.get(Gpr::Rdx).unwrap_or(0) << 32 | (lo & 0xffff_ffff))
    }
}

/// `HV_STATUS_*` and, for rep calls, the reps completed.
pub(super) fn result(vcpu: &VcpuSnapshot, outcome: &Outcome) -> String {
    match (&outcome.next, result_value(vcpu, outcome)) {
        (Next::Advance, Some(value)) => {
            let code = (value & HV_HYPERCALL_CODE_MASK) as u16;
            let reps = Control(value).rep_count();
            let name = STATUS
                .iter()
                .find(|(c, _)| *c == code)
                .map_or_else(|| format!("HV_STATUS {code:#x}"), |(_, n)| n.to_string());
            if reps != 0 {
                format!("{name}, {reps} reps")
            } else {
                name
            }
        }
        (Next::Retry, _) => {
            // The input value's new rep start is the progress (64-bit: RCX; 32-bit: EDX:EAX).
            let next = if vcpu.mode == CpuMode::Long64 {
                outcome.writes.get(Gpr::Rcx)
            } else {
                result_value(vcpu, outcome)
            };
            match next {
                Some(v) => format!("continue at rep {}", Control(v).rep_start()),
                None => "continue".to_string(),
            }
        }
        _ => polyvisor_core::trace::describe_outcome(outcome, Gpr::Rax, |v| format!("{v:#x}")),
    }
}

/// The names of the Hv#1 MSRs (TLFS "Synthetic MSRs", `hvgdk_mini.h`).
pub(super) fn msr_name(msr: u32) -> Option<&'static str> {
    const CRASH_P: [&str; 5] = [
        "HV_X64_MSR_CRASH_P0",
        "HV_X64_MSR_CRASH_P1",
        "HV_X64_MSR_CRASH_P2",
        "HV_X64_MSR_CRASH_P3",
        "HV_X64_MSR_CRASH_P4",
    ];
    Some(match msr {
        HV_X64_MSR_GUEST_OS_ID => "HV_X64_MSR_GUEST_OS_ID",
        HV_X64_MSR_HYPERCALL => "HV_X64_MSR_HYPERCALL",
        HV_X64_MSR_VP_INDEX => "HV_X64_MSR_VP_INDEX",
        HV_X64_MSR_RESET => "HV_X64_MSR_RESET",
        HV_X64_MSR_VP_RUNTIME => "HV_X64_MSR_VP_RUNTIME",
        HV_X64_MSR_TIME_REF_COUNT => "HV_X64_MSR_TIME_REF_COUNT",
        HV_X64_MSR_REFERENCE_TSC => "HV_X64_MSR_REFERENCE_TSC",
        HV_X64_MSR_TSC_FREQUENCY => "HV_X64_MSR_TSC_FREQUENCY",
        HV_X64_MSR_APIC_FREQUENCY => "HV_X64_MSR_APIC_FREQUENCY",
        HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4 => {
            return CRASH_P.get((msr - HV_X64_MSR_CRASH_P0) as usize).copied()
        }
        HV_X64_MSR_CRASH_CTL => "HV_X64_MSR_CRASH_CTL",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyvisor_core::testing::{memory, snapshot};
    use polyvisor_core::Registers;

    fn control(code: u16, fast: bool, count: u64, start: u64) -> u64 {
        u64::from(code) | u64::from(fast) << 16 | count << 32 | start << 48
    }

    #[test]
    fn flush_list_shows_reps_and_flags_by_name() {
        let mem = memory(0x3000);
        let block = [0u64, HV_FLUSH_ALL_PROCESSORS, 0];
        for (i, w) in block.iter().enumerate() {
            mem.write_obj(*w, GuestAddress(0x1000 + 8 * i as u64)).unwrap();
        }
        let regs = Registers {
            rcx: control(HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, false, 12, 0),
            rdx: 0x1000,
            r8: 0x2000,
            ..Default::default()
        };
        assert_eq!(
            call(&snapshot(regs), &mem).to_string(),
            "HvCallFlushVirtualAddressList(rep 0/12, address_space=0x0, \
             flags=ALL_PROCESSORS, processor_mask=0x0)"
        );
        let regs = Registers {
            rcx: control(HVCALL_SEND_IPI, true, 0, 0),
            rdx: 0x30,
            r8: 3,
            ..Default::default()
        };
        assert_eq!(
            call(&snapshot(regs), &mem).to_string(),
            "HvCallSendSyntheticClusterIpi(fast, vector=0x30, processor_mask=0x3)"
        );
        let regs = Registers { rcx: 0x99, ..Default::default() };
        assert_eq!(call(&snapshot(regs), &mem).to_string(), "unknown(input=0x0, output=0x0)");
        assert_eq!(flags(0x21), "ALL_PROCESSORS|0x20");
    }

    #[test]
    fn results_are_status_names() {
        let v = snapshot(Registers::default());
        let ok = Outcome::ret(Gpr::Rax, 12 << 32);
        assert_eq!(result(&v, &ok), "HV_STATUS_SUCCESS, 12 reps");
        let denied = Outcome::ret(Gpr::Rax, u64::from(HV_STATUS_ACCESS_DENIED));
        assert_eq!(result(&v, &denied), "HV_STATUS_ACCESS_DENIED");
        assert_eq!(result(&v, &Outcome::invalid_opcode()), "#UD");
        let c = Control(control(3, false, 300, 0));
        let more = super::super::codec::continuation(&v, c, 256);
        assert_eq!(result(&v, &more), "continue at rep 256");
        assert_eq!(msr_name(HV_X64_MSR_CRASH_P0 + 2), Some("HV_X64_MSR_CRASH_P2"));
        assert_eq!(msr_name(0x4000_0050), None);
    }
}
