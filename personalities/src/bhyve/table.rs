//! The hypercall table: one row per number of the author's `bhyve_hypercall.h`, each with the
//! rings it may be called from written out (the review's "better kept explicit in terms of the
//! protection ring they can be called from").

use polyvisor_core::{Call, Gpr, HypercallRow, Outcome, ProbeEvent, Reply, Rings};

use super::abi::*;
use super::probes::{read_probe_args, read_probe_name};
use super::Bhyve;

/// The table, sorted by number. Numbers at or above [`HYPERCALL_INDEX_MAX`] have no row.
pub const TABLE: &[HypercallRow<Bhyve>] = &[
    HypercallRow {
        number: HYPERCALL_PROTOTYPE,
        name: "HYPERCALL_PROTOTYPE",
        rings: Rings::KERNEL_AND_USER,
        handler: Some(hypercall_prototype),
        summary: "returns HYPERCALL_RET_SUCCESS (0): a ping",
    },
    HypercallRow {
        number: HYPERCALL_DTRACE_PROBE_CREATE,
        name: "HYPERCALL_DTRACE_PROBE_CREATE",
        rings: Rings::KERNEL,
        handler: Some(hypercall_dtrace_probe_create),
        summary: "registers the probe named by (RDI=pointer, RSI=length); id in RDI",
    },
    HypercallRow {
        number: HYPERCALL_DTRACE_PROBE,
        name: "HYPERCALL_DTRACE_PROBE",
        rings: Rings::KERNEL,
        handler: Some(hypercall_dtrace_probe),
        summary: "fires probe RDI with the 5 u64 args at RSI and thread id RDX",
    },
    HypercallRow {
        number: HYPERCALL_DTRACE_RESERVED1,
        name: "HYPERCALL_DTRACE_RESERVED1",
        rings: Rings::KERNEL,
        handler: None,
        summary: "reserved for DTrace; #UD",
    },
    HypercallRow {
        number: HYPERCALL_DTRACE_RESERVED2,
        name: "HYPERCALL_DTRACE_RESERVED2",
        rings: Rings::KERNEL,
        handler: None,
        summary: "reserved for DTrace; #UD",
    },
    HypercallRow {
        number: HYPERCALL_DTRACE_RESERVED3,
        name: "HYPERCALL_DTRACE_RESERVED3",
        rings: Rings::KERNEL,
        handler: None,
        summary: "reserved for DTrace; #UD",
    },
    HypercallRow {
        number: HYPERCALL_DTRACE_RESERVED4,
        name: "HYPERCALL_DTRACE_RESERVED4",
        rings: Rings::KERNEL,
        handler: None,
        summary: "reserved for DTrace; #UD",
    },
];

fn error() -> Reply {
    Reply::Error(rax_of(HYPERCALL_RET_ERROR))
}

/// `hc_handle_prototype`: always `HYPERCALL_RET_SUCCESS`.
fn hypercall_prototype(_: &Bhyve, _: &mut Call<'_>) -> Reply {
    Reply::Value(rax_of(HYPERCALL_RET_SUCCESS))
}

/// PROBE_CREATE(RDI = guest-physical pointer to the name, RSI = its length in bytes).
/// Success: RAX = `HYPERCALL_RET_SUCCESS` and RDI = the probe id (1..=4096). Failure:
/// RAX = `HYPERCALL_RET_ERROR`, RDI unchanged. RAX stays a status as in every other call.
fn hypercall_dtrace_probe_create(p: &Bhyve, call: &mut Call<'_>) -> Reply {
    let mut buf = [0u8; MAX_PROBE_NAME];
    let created = read_probe_name(call.memory, call.arg(0), call.arg(1), &mut buf)
        .and_then(|name| p.probes.create(name));
    match created {
        Ok(id) => {
            let mut out = Outcome::ret(Gpr::Rax, rax_of(HYPERCALL_RET_SUCCESS));
            out.writes.push(Gpr::Rdi, call.vcpu.mode.truncate(id));
            Reply::Outcome(out)
        }
        Err(_) => error(),
    }
}

/// PROBE(RDI = probe id, RSI = guest-physical pointer to 5 u64 arguments, RDX = guest thread
/// id), the arguments of the author's `hc_handle_dtrace_probe`. Records the event through the
/// platform and counts it; unknown ids and unreadable arguments answer `HYPERCALL_RET_ERROR`.
fn hypercall_dtrace_probe(p: &Bhyve, call: &mut Call<'_>) -> Reply {
    let Ok(probe) = p.probes.get(call.arg(0)) else {
        return error();
    };
    let Ok(args) = read_probe_args(call.memory, call.arg(1)) else {
        return error();
    };
    probe.count();
    call.platform.probe_fired(&ProbeEvent {
        probe_id: probe.id,
        name: probe.name,
        args,
        thread: call.arg(2),
        vcpu: call.vcpu.vcpu,
        timestamp_ns: call.platform.monotonic_ns(),
    });
    Reply::Value(rax_of(HYPERCALL_RET_SUCCESS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_sorted_complete_and_explicit() {
        let numbers: Vec<u64> = TABLE.iter().map(|r| r.number).collect();
        assert_eq!(numbers, (0..HYPERCALL_INDEX_MAX).collect::<Vec<_>>());
        let rings: Vec<String> = TABLE.iter().map(|r| r.rings.describe()).collect();
        assert_eq!(rings, ["0,3", "0", "0", "0", "0", "0", "0"]);
        let implemented: Vec<bool> = TABLE.iter().map(|r| r.handler.is_some()).collect();
        assert_eq!(implemented, [true, true, true, false, false, false, false]);
        let names: Vec<&str> = TABLE.iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "HYPERCALL_PROTOTYPE",
                "HYPERCALL_DTRACE_PROBE_CREATE",
                "HYPERCALL_DTRACE_PROBE",
                "HYPERCALL_DTRACE_RESERVED1",
                "HYPERCALL_DTRACE_RESERVED2",
                "HYPERCALL_DTRACE_RESERVED3",
                "HYPERCALL_DTRACE_RESERVED4",
            ]
        );
    }

    #[test]
    fn return_codes_are_the_headers() {
        assert_eq!(rax_of(HYPERCALL_RET_SUCCESS), 0);
        assert_eq!(rax_of(HYPERCALL_RET_ERROR), 1);
        assert_eq!(rax_of(HYPERCALL_RET_NOT_IMPL), u64::MAX);
    }
}
