//! bhyve's calls in a trace: the review's argument meanings (`bhyve_hypercall.h`, the
//! author's `hc_handle_*`) and its three return codes by name.

use polyvisor_core::trace::{describe_outcome, signed_result};
use polyvisor_core::{CallTrace, Gpr, GuestMemoryMmap, Outcome, VcpuSnapshot};

use super::abi::*;
use super::probes::read_probe_name;
use super::{codec, TABLE};

/// The call in `vcpu`'s registers; PROBE_CREATE's name is read from guest memory.
pub(super) fn call(vcpu: &VcpuSnapshot, memory: &GuestMemoryMmap) -> CallTrace {
    let input = codec::decode(vcpu);
    let [a0, a1, a2, ..] = input.args;
    let named = |name: &str| CallTrace::new(input.number, name);
    match input.number {
        HYPERCALL_PROTOTYPE => named("HYPERCALL_PROTOTYPE"),
        HYPERCALL_DTRACE_PROBE_CREATE => {
            let mut buf = [0u8; MAX_PROBE_NAME];
            let c = named("HYPERCALL_DTRACE_PROBE_CREATE");
            match read_probe_name(memory, a0, a1, &mut buf) {
                Ok(name) => c.arg("name", format_args!("{name:?}")),
                Err(_) => c.hex("name", a0).num("len", a1),
            }
        }
        HYPERCALL_DTRACE_PROBE => {
            named("HYPERCALL_DTRACE_PROBE").num("id", a0).hex("args", a1).num("thread", a2)
        }
        n => CallTrace::raw(TABLE, n, &input.args),
    }
}

/// RAX as the review's return code; PROBE_CREATE's new id (RDI) after it.
pub(super) fn result(vcpu: &VcpuSnapshot, outcome: &Outcome) -> String {
    let text = describe_outcome(outcome, Gpr::Rax, |v| match signed_result(vcpu.mode, v) {
        HYPERCALL_RET_SUCCESS => "HYPERCALL_RET_SUCCESS".to_string(),
        HYPERCALL_RET_ERROR => "HYPERCALL_RET_ERROR".to_string(),
        HYPERCALL_RET_NOT_IMPL => "HYPERCALL_RET_NOT_IMPL".to_string(),
        other => other.to_string(),
    });
    match outcome.writes.get(Gpr::Rdi) {
        Some(id) => format!("{text}, id={id}"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyvisor_core::testing::{memory, snapshot};
    use polyvisor_core::{CpuMode, Registers};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn calls_and_results_by_name() {
        let mem = memory(0x2000);
        mem.write_slice(b"vm:entry", GuestAddress(0x1000)).unwrap();
        let regs = Registers { rax: 1, rdi: 0x1000, rsi: 8, ..Default::default() };
        let c = call(&snapshot(regs), &mem);
        assert_eq!(c.to_string(), "HYPERCALL_DTRACE_PROBE_CREATE(name=\"vm:entry\")");
        let regs = Registers { rax: 1, rdi: 0xf000_0000, rsi: 8, ..Default::default() };
        assert_eq!(
            call(&snapshot(regs), &mem).to_string(),
            "HYPERCALL_DTRACE_PROBE_CREATE(name=0xf0000000, len=8)"
        );
        let regs = Registers { rax: 2, rdi: 3, rsi: 0x1000, rdx: 9, ..Default::default() };
        assert_eq!(
            call(&snapshot(regs), &mem).to_string(),
            "HYPERCALL_DTRACE_PROBE(id=3, args=0x1000, thread=9)"
        );
        let regs = Registers { rax: 5, ..Default::default() };
        assert_eq!(call(&snapshot(regs), &mem).to_string(), "HYPERCALL_DTRACE_RESERVED3()");

        let mut v = snapshot(Registers::default());
        let mut out = Outcome::ret(Gpr::Rax, 0);
        out.writes.push(Gpr::Rdi, 4);
        assert_eq!(result(&v, &out), "HYPERCALL_RET_SUCCESS, id=4");
        assert_eq!(result(&v, &Outcome::ret(Gpr::Rax, 1)), "HYPERCALL_RET_ERROR");
        assert_eq!(result(&v, &Outcome::invalid_opcode()), "#UD");
        v.mode = CpuMode::Protected32;
        assert_eq!(result(&v, &Outcome::ret(Gpr::Rax, 0xffff_ffff)), "HYPERCALL_RET_NOT_IMPL");
    }
}
