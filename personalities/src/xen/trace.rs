//! Xen's calls in a trace: the call named as `xen.h` names it without `__HYPERVISOR_`, its
//! sub-op by the public headers' constant (`SCHEDOP_*`, `XENVER_*`, `CONSOLEIO_*`,
//! `HVMOP_*`, `XENMEM_*`, `VCPUOP_*`, `EVTCHNOP_*`), the fields of the structure it points at where the
//! trace shows them, and results as negated `errno.h` names. A sub-op without a name here is
//! shown by number.

use polyvisor_core::constant_names;
use polyvisor_core::trace::{describe_outcome, negated_errno, num, row_name, signed_result};
use polyvisor_core::{Call, CallTrace, Gpr, GuestMemoryMmap, Outcome, Platform, VcpuSnapshot};

use super::abi::console::*;
use super::abi::evtchn::*;
use super::abi::hvm::*;
use super::abi::memory::*;
use super::abi::params::*;
use super::abi::sched::*;
use super::abi::vcpu::*;
use super::abi::version::*;
use super::abi::virq::*;
use super::abi::{nr, DOMID_SELF};
use super::codec::{self, Width};
use super::guest::Guest;
use super::table::TABLE;

/// The prefix of every row name (`xen.h`'s `__HYPERVISOR_*`), left out of traces.
const PREFIX: &str = "__HYPERVISOR_";

/// The errnos Xen's calls answer (`xen/include/public/errno.h`).
const ERRNO: &[(u64, &str)] = {
    use super::abi::errno::*;
    constant_names![
        EPERM, ENOENT, ESRCH, ENXIO, E2BIG, EACCES, EFAULT, EBUSY, EEXIST, ENODEV, EINVAL, EDOM,
        ENOSYS, ENODATA, ETIME, EOPNOTSUPP, ENOBUFS
    ]
};

const SCHEDOP: &[(u64, &str)] = constant_names![
    SCHEDOP_yield,
    SCHEDOP_block,
    SCHEDOP_shutdown,
    SCHEDOP_poll,
    SCHEDOP_remote_shutdown,
    SCHEDOP_shutdown_code,
    SCHEDOP_watchdog,
    SCHEDOP_pin_override
];

/// `SHUTDOWN_*` without the prefix, as `reason=poweroff`.
const SHUTDOWN: &[(u64, &str)] = &[
    (SHUTDOWN_poweroff as u64, "poweroff"),
    (SHUTDOWN_reboot as u64, "reboot"),
    (SHUTDOWN_suspend as u64, "suspend"),
    (SHUTDOWN_crash as u64, "crash"),
    (SHUTDOWN_watchdog as u64, "watchdog"),
    (SHUTDOWN_soft_reset as u64, "soft_reset"),
];

const XENVER: &[(u64, &str)] = constant_names![
    XENVER_version,
    XENVER_extraversion,
    XENVER_compile_info,
    XENVER_capabilities,
    XENVER_changeset,
    XENVER_platform_parameters,
    XENVER_get_features,
    XENVER_pagesize,
    XENVER_guest_handle,
    XENVER_commandline,
    XENVER_build_id,
    XENVER_extraversion2,
    XENVER_capabilities2,
    XENVER_changeset2,
    XENVER_commandline2
];

const CONSOLEIO: &[(u64, &str)] = constant_names![CONSOLEIO_write, CONSOLEIO_read];

const HVMOP: &[(u64, &str)] = constant_names![
    HVMOP_set_param,
    HVMOP_get_param,
    HVMOP_pagetable_dying,
    HVMOP_get_time,
    HVMOP_set_evtchn_upcall_vector
];

const HVM_PARAM: &[(u64, &str)] = constant_names![
    HVM_PARAM_CALLBACK_IRQ,
    HVM_PARAM_STORE_PFN,
    HVM_PARAM_STORE_EVTCHN,
    HVM_PARAM_PAE_ENABLED,
    HVM_PARAM_DM_DOMAIN,
    HVM_PARAM_VM86_TSS,
    HVM_PARAM_CONSOLE_PFN,
    HVM_PARAM_CONSOLE_EVTCHN,
    HVM_PARAM_ACPI_IOPORTS_LOCATION,
    HVM_PARAM_MEMORY_EVENT_CR0,
    HVM_PARAM_MEMORY_EVENT_CR3,
    HVM_PARAM_MEMORY_EVENT_CR4,
    HVM_PARAM_MEMORY_EVENT_INT3,
    HVM_PARAM_NESTEDHVM,
    HVM_PARAM_MEMORY_EVENT_SINGLE_STEP,
    HVM_PARAM_BUFIOREQ_EVTCHN,
    HVM_PARAM_MEMORY_EVENT_MSR,
    HVM_PARAM_VM_GENERATION_ID_ADDR,
    HVM_PARAM_ALTP2M,
    HVM_PARAM_X87_FIP_WIDTH,
    HVM_PARAM_VM86_TSS_SIZED
];

const XENMEM: &[(u64, &str)] = constant_names![
    XENMEM_maximum_ram_page,
    XENMEM_current_reservation,
    XENMEM_maximum_reservation,
    XENMEM_add_to_physmap,
    XENMEM_memory_map,
    XENMEM_maximum_gpfn
];

const XENMAPSPACE: &[(u64, &str)] = constant_names![
    XENMAPSPACE_shared_info,
    XENMAPSPACE_grant_table,
    XENMAPSPACE_gmfn,
    XENMAPSPACE_gmfn_range,
    XENMAPSPACE_gmfn_foreign,
    XENMAPSPACE_dev_mmio
];

const VCPUOP: &[(u64, &str)] = constant_names![
    VCPUOP_is_up,
    VCPUOP_set_singleshot_timer,
    VCPUOP_stop_singleshot_timer,
    VCPUOP_register_vcpu_info
];

const EVTCHNOP: &[(u64, &str)] = constant_names![
    EVTCHNOP_bind_interdomain,
    EVTCHNOP_bind_virq,
    EVTCHNOP_bind_pirq,
    EVTCHNOP_close,
    EVTCHNOP_send,
    EVTCHNOP_status,
    EVTCHNOP_alloc_unbound,
    EVTCHNOP_bind_ipi,
    EVTCHNOP_bind_vcpu,
    EVTCHNOP_unmask,
    EVTCHNOP_reset,
    EVTCHNOP_init_control,
    EVTCHNOP_expand_array,
    EVTCHNOP_set_priority,
    EVTCHNOP_reset_cont
];

const VIRQ: &[(u64, &str)] =
    constant_names![VIRQ_TIMER, VIRQ_DEBUG, VIRQ_CONSOLE, VIRQ_DOM_EXC, VIRQ_XENOPROF, VIRQ_XENPMU];

/// The constant's name, or the number.
fn name_of(value: u64, names: &[(u64, &str)]) -> String {
    names.iter().find(|(v, _)| *v == value).map_or_else(|| num(value), |(_, n)| n.to_string())
}

/// Reads the structure at linear address `base` for the trace, as the handlers do
/// ([`super::guest`]); `None` when the guest could not have it read.
struct At<'g, 'a> {
    guest: &'g Guest<'a>,
    base: u64,
}

impl At<'_, '_> {
    fn bytes<const N: usize>(&self, offset: u64) -> Option<[u8; N]> {
        self.guest.read_array::<N>(self.base.checked_add(offset)?).ok()
    }
    fn u16(&self, offset: u64) -> Option<u64> {
        self.bytes::<2>(offset).map(|b| u64::from(u16::from_le_bytes(b)))
    }
    fn u32(&self, offset: u64) -> Option<u64> {
        self.bytes::<4>(offset).map(|b| u64::from(u32::from_le_bytes(b)))
    }
    /// A `xen_ulong_t` / `xen_pfn_t` of the caller's width.
    fn word(&self, offset: u64, width: Width) -> Option<u64> {
        match width {
            Width::W64 => self.bytes::<8>(offset).map(u64::from_le_bytes),
            Width::W32 => self.u32(offset),
        }
    }
}

/// `domid=DOMID_SELF` or the number.
fn domid(id: u64) -> String {
    if id == u64::from(DOMID_SELF) {
        "DOMID_SELF".to_string()
    } else {
        id.to_string()
    }
}

/// The pointer argument shown raw, or the fields read through it.
fn fields(c: CallTrace, arg: u64, read: Option<Vec<(&str, String)>>) -> CallTrace {
    match read {
        Some(fields) => fields.into_iter().fold(c, |c, (n, v)| c.arg(n, v)),
        None => c.hex("arg", arg),
    }
}

/// The call in `vcpu`'s registers, by the caller's convention.
pub(super) fn call(
    vcpu: &VcpuSnapshot,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
) -> CallTrace {
    let width = Width::of(vcpu);
    let input = codec::decode(vcpu);
    let guest = Guest::of(&Call { input, vcpu, memory, platform });
    let [a0, a1, a2, ..] = input.args;
    let row = row_name(TABLE, input.number);
    let name = row.map_or(polyvisor_core::trace::UNKNOWN, |n| n.strip_prefix(PREFIX).unwrap_or(n));
    let c = CallTrace::new(input.number, name);
    let at = |base: u64| At { guest: &guest, base };
    match input.number {
        nr::sched_op => {
            let c = c.item(name_of(a0, SCHEDOP));
            let g = at(a1);
            match u32::try_from(a0) {
                Ok(SCHEDOP_shutdown | SCHEDOP_shutdown_code) => {
                    let read = g.u32(0).map(|r| vec![("reason", name_of(r, SHUTDOWN))]);
                    fields(c, a1, read)
                }
                Ok(SCHEDOP_remote_shutdown) => {
                    let read = (|| {
                        Some(vec![
                            ("domid", domid(g.u16(0)?)),
                            ("reason", name_of(g.u32(4)?, SHUTDOWN)),
                        ])
                    })();
                    fields(c, a1, read)
                }
                Ok(SCHEDOP_yield | SCHEDOP_block) => c,
                _ => c.hex("arg", a1),
            }
        }
        nr::xen_version => {
            let c = c.item(name_of(a0, XENVER));
            if a1 != 0 {
                c.hex("arg", a1)
            } else {
                c
            }
        }
        nr::console_io => c.item(name_of(a0, CONSOLEIO)).num("count", a1).hex("buffer", a2),
        nr::hvm_op => {
            let c = c.item(name_of(a0, HVMOP));
            let g = at(a1);
            match a0 {
                HVMOP_set_param | HVMOP_get_param => {
                    let read = (|| {
                        let mut f = vec![
                            ("domid", domid(g.u16(0)?)),
                            ("index", name_of(g.u32(4)?, HVM_PARAM)),
                        ];
                        if a0 == HVMOP_set_param {
                            f.push(("value", format!("{:#x}", g.word(8, Width::W64)?)));
                        }
                        Some(f)
                    })();
                    fields(c, a1, read)
                }
                HVMOP_set_evtchn_upcall_vector => {
                    let read = (|| {
                        Some(vec![
                            ("vcpu", g.u32(0)?.to_string()),
                            ("vector", format!("{:#x}", g.u32(4)? & 0xff)),
                        ])
                    })();
                    fields(c, a1, read)
                }
                _ => c.hex("arg", a1),
            }
        }
        nr::memory_op => {
            let cmd = a0 & MEMOP_CMD_MASK;
            let mut c = c.item(name_of(cmd, XENMEM));
            if a0 >> MEMOP_EXTENT_SHIFT != 0 {
                c = c.num("extent", a0 >> MEMOP_EXTENT_SHIFT);
            }
            if cmd == XENMEM_add_to_physmap {
                // struct xen_add_to_physmap { domid_t domid; uint16_t size; unsigned int space;
                // xen_ulong_t idx; xen_pfn_t gpfn; }
                let g = at(a1);
                let w = width.word() as u64;
                let read = (|| {
                    Some(vec![
                        ("domid", domid(g.u16(0)?)),
                        ("space", name_of(g.u32(4)?, XENMAPSPACE)),
                        ("idx", num(g.word(8, width)?)),
                        ("gpfn", format!("{:#x}", g.word(8 + w, width)?)),
                    ])
                })();
                fields(c, a1, read)
            } else {
                c.hex("arg", a1)
            }
        }
        nr::vcpu_op => c.item(name_of(a0, VCPUOP)).num("vcpu", a1).hex("arg", a2),
        nr::set_timer_op => match super::calls::timer::timeout(vcpu, &input.args) {
            0 => c.item("stop"),
            t => c.num("timeout", t),
        },
        nr::event_channel_op => {
            let c = c.item(name_of(a0, EVTCHNOP));
            fields(c, a1, event_channel_fields(a0, &at(a1)))
        }
        // Sub-ops are shown by number: each names a `*_op` command first.
        _ if row.is_some_and(|r| r.ends_with("_op")) => c.num("cmd", a0).hex("arg", a1),
        n => {
            let raw = CallTrace::raw(TABLE, n, &input.args);
            CallTrace { name: name.to_string(), ..raw }
        }
    }
}

/// The input fields of an `event_channel_op` sub-op's structure
/// (`xen/include/public/event_channel.h`); output fields are left out.
fn event_channel_fields(cmd: u64, g: &At<'_, '_>) -> Option<Vec<(&'static str, String)>> {
    let port = |offset| g.u32(offset).map(|p| p.to_string());
    Some(match u32::try_from(cmd).ok()? {
        // struct evtchn_alloc_unbound { domid_t dom, remote_dom; evtchn_port_t port; }
        EVTCHNOP_alloc_unbound => {
            vec![("dom", domid(g.u16(0)?)), ("remote_dom", domid(g.u16(2)?))]
        }
        // struct evtchn_bind_interdomain { domid_t remote_dom; evtchn_port_t remote_port, local_port; }
        EVTCHNOP_bind_interdomain => {
            vec![("remote_dom", domid(g.u16(0)?)), ("remote_port", port(4)?)]
        }
        // struct evtchn_bind_virq { uint32_t virq, vcpu; evtchn_port_t port; }
        EVTCHNOP_bind_virq => {
            vec![("virq", name_of(g.u32(0)?, VIRQ)), ("vcpu", g.u32(4)?.to_string())]
        }
        // struct evtchn_bind_ipi { uint32_t vcpu; evtchn_port_t port; }
        EVTCHNOP_bind_ipi => vec![("vcpu", g.u32(0)?.to_string())],
        // struct evtchn_bind_vcpu { evtchn_port_t port; uint32_t vcpu; }
        EVTCHNOP_bind_vcpu => vec![("port", port(0)?), ("vcpu", g.u32(4)?.to_string())],
        // struct evtchn_status { domid_t dom; evtchn_port_t port; ... }
        EVTCHNOP_status => vec![("dom", domid(g.u16(0)?)), ("port", port(4)?)],
        // evtchn_close, evtchn_send and evtchn_unmask hold just the port.
        EVTCHNOP_close | EVTCHNOP_send | EVTCHNOP_unmask => vec![("port", port(0)?)],
        _ => return None,
    })
}

/// RAX as the caller's `long`: `-ENOSYS`, or the value.
pub(super) fn result(vcpu: &VcpuSnapshot, outcome: &Outcome) -> String {
    describe_outcome(outcome, Gpr::Rax, |v| negated_errno(signed_result(vcpu.mode, v), ERRNO))
}

/// The hypercall-page MSR (CPUID 0x40000002 EBX; `xen/include/public/arch-x86/cpuid.h`);
/// the headers give it no constant name.
pub(super) fn msr_name(msr: u32) -> Option<&'static str> {
    (msr == super::abi::cpuid::HYPERCALL_PAGE_MSR).then_some("hypercall_page")
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyvisor_core::testing::{memory, snapshot, RecordingPlatform};
    use polyvisor_core::{CpuMode, Registers};
    use vm_memory::{Bytes, GuestAddress};

    fn call(v: &VcpuSnapshot, mem: &GuestMemoryMmap) -> CallTrace {
        super::call(v, mem, &RecordingPlatform::new(1))
    }

    fn call64(rax: u64, rdi: u64, rsi: u64, rdx: u64, mem: &GuestMemoryMmap) -> String {
        call(&snapshot(Registers { rax, rdi, rsi, rdx, ..Default::default() }), mem).to_string()
    }

    #[test]
    fn sub_ops_by_name() {
        let mem = memory(0x3000);
        mem.write_obj(u32::from(SHUTDOWN_poweroff), GuestAddress(0x1000)).unwrap();
        assert_eq!(
            call64(nr::sched_op, 2, 0x1000, 0, &mem),
            "sched_op(SCHEDOP_shutdown, reason=poweroff)"
        );
        assert_eq!(call64(nr::sched_op, 0, 0, 0, &mem), "sched_op(SCHEDOP_yield)");
        assert_eq!(
            call64(nr::sched_op, 2, 0xf000_0000, 0, &mem),
            "sched_op(SCHEDOP_shutdown, arg=0xf0000000)"
        );
        assert_eq!(call64(nr::xen_version, 7, 0, 0, &mem), "xen_version(XENVER_pagesize)");
        assert_eq!(
            call64(nr::console_io, 0, 5, 0x2000, &mem),
            "console_io(CONSOLEIO_write, count=5, buffer=0x2000)"
        );
        // struct xen_hvm_param { domid_t domid; u16 pad; u32 index; u64 value; }
        mem.write_obj(DOMID_SELF, GuestAddress(0x2000)).unwrap();
        mem.write_obj(HVM_PARAM_CALLBACK_IRQ, GuestAddress(0x2004)).unwrap();
        mem.write_obj(0x0200_0000_0000_00f3u64, GuestAddress(0x2008)).unwrap();
        assert_eq!(
            call64(nr::hvm_op, HVMOP_set_param, 0x2000, 0, &mem),
            "hvm_op(HVMOP_set_param, domid=DOMID_SELF, index=HVM_PARAM_CALLBACK_IRQ, \
             value=0x2000000000000f3)"
        );
        assert_eq!(call64(nr::vcpu_op, 3, 1, 0, &mem), "vcpu_op(VCPUOP_is_up, vcpu=1, arg=0x0)");
        assert_eq!(
            call64(nr::event_channel_op, 99, 0x10, 0, &mem),
            "event_channel_op(99, arg=0x10)"
        );
        assert_eq!(call64(nr::sched_op, 42, 7, 0, &mem), "sched_op(42, arg=0x7)");
        assert_eq!(call64(nr::multicall, 1, 0, 0, &mem), "multicall(a0=0x1)");
        assert_eq!(call64(1000, 0, 0, 0, &mem), "unknown()");
    }

    #[test]
    fn event_channel_sub_ops_show_their_input_fields() {
        let mem = memory(0x3000);
        // struct evtchn_bind_virq { virq = VIRQ_TIMER, vcpu = 1 }
        mem.write_obj(VIRQ_TIMER, GuestAddress(0x1000)).unwrap();
        mem.write_obj(1u32, GuestAddress(0x1004)).unwrap();
        assert_eq!(
            call64(nr::event_channel_op, EVTCHNOP_bind_virq.into(), 0x1000, 0, &mem),
            "event_channel_op(EVTCHNOP_bind_virq, virq=VIRQ_TIMER, vcpu=1)"
        );
        // struct evtchn_alloc_unbound { dom = DOMID_SELF, remote_dom = 0 }
        mem.write_obj(DOMID_SELF, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0u16, GuestAddress(0x1002)).unwrap();
        assert_eq!(
            call64(nr::event_channel_op, EVTCHNOP_alloc_unbound.into(), 0x1000, 0, &mem),
            "event_channel_op(EVTCHNOP_alloc_unbound, dom=DOMID_SELF, remote_dom=0)"
        );
        mem.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            call64(nr::event_channel_op, EVTCHNOP_send.into(), 0x1000, 0, &mem),
            "event_channel_op(EVTCHNOP_send, port=7)"
        );
        // A structure the trace cannot read shows the pointer.
        assert_eq!(
            call64(nr::event_channel_op, EVTCHNOP_send.into(), 0xf000_0000, 0, &mem),
            "event_channel_op(EVTCHNOP_send, arg=0xf0000000)"
        );
        assert_eq!(call64(nr::set_timer_op, 0, 0, 0, &mem), "set_timer_op(stop)");
        assert_eq!(
            call64(nr::set_timer_op, 5_000_000, 0, 0, &mem),
            "set_timer_op(timeout=0x4c4b40)"
        );
    }

    #[test]
    fn add_to_physmap_follows_the_callers_width() {
        let mem = memory(0x3000);
        mem.write_obj(DOMID_SELF, GuestAddress(0x1000)).unwrap();
        mem.write_obj(XENMAPSPACE_shared_info, GuestAddress(0x1004)).unwrap();
        mem.write_obj(0u32, GuestAddress(0x1008)).unwrap();
        mem.write_obj(0xfeu32, GuestAddress(0x100c)).unwrap();
        let regs = Registers { rax: nr::memory_op, rbx: 7, rcx: 0x1000, ..Default::default() };
        let mut v = snapshot(regs);
        v.mode = CpuMode::Protected32;
        assert_eq!(
            call(&v, &mem).to_string(),
            "memory_op(XENMEM_add_to_physmap, domid=DOMID_SELF, \
             space=XENMAPSPACE_shared_info, idx=0, gpfn=0xfe)"
        );
    }

    #[test]
    fn results_are_errno_names() {
        let mut v = snapshot(Registers::default());
        let out = Outcome::ret(Gpr::Rax, super::super::abi::neg(super::super::abi::errno::ENOSYS));
        assert_eq!(result(&v, &out), "-ENOSYS");
        v.mode = CpuMode::Protected32;
        let out = Outcome::ret(
            Gpr::Rax,
            super::super::abi::neg(super::super::abi::errno::EPERM) & 0xffff_ffff,
        );
        assert_eq!(result(&v, &out), "-EPERM");
        assert_eq!(result(&v, &Outcome::ret(Gpr::Rax, 4096)), "4096");
        assert_eq!(msr_name(0x4000_0000), Some("hypercall_page"));
    }
}
