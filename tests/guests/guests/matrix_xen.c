/* matrix_xen: the Xen column of polyvisor's cross-personality matrix (docs/testing.md).
 * The answers are docs/abi/xen.md's: VMCALL/VMMCALL with RAX number and RDI RSI RDX R10 R8
 * arguments (32-bit: EAX, EBX ECX EDX ESI EDI), RAX result, -ENOSYS for disabled and unknown
 * calls, -EPERM for denied calls and CPL 3 callers, -EFAULT for a bad pointer;
 * CONSOLEIO_write for console output, SCHEDOP_yield, SCHEDOP_shutdown, HVMOP_get_time as the
 * time source and HVMOP_set_evtchn_upcall_vector to interrupt another vCPU.
 * Scenarios: see matrix.h.
 */
/* xen_hc.h's own check() and console helpers other guests use are not needed here. */
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-variable"
#include "xen_hc.h"
#include "matrix.h"

#define UNKNOWN_NUMBER 0x7ff0
#define WAKE_VECTOR 0xf3
/* What CONSOLEIO_write prints: the host looks for it on the console. */
static const char console_marker[] = "matrix_xen: written with CONSOLEIO_write\n";

static void expect(const char *what, long got, long want)
{
    if (got <= XEN_FAULTED && got > XEN_FAULTED - 256)
        check_fault(what, (int)(XEN_FAULTED - got), 0);
    else
        check_eq(what, (u64)got, (u64)want);
}

static void identity(void)
{
    mx_check_signature(0x40000000, "XenVMMXenVMM", 0x40000005);
    u32 r[4];
    cpuid(0x40000001, 0, r);
    check_eq("CPUID 0x40000001 EAX: version 4.17", r[0], 4 << 16 | 17);
}

static u64 xen_version(void)
{
    return (u64)HC2(__HYPERVISOR_xen_version, XENVER_version, 0);
}

static void bad_pointers(void)
{
    u64 end = mx_ram_end();
    check_true("RAM end known", end != 0, "no memory map");
    expect("CONSOLEIO_write from beyond RAM -> -EFAULT",
           HC3(__HYPERVISOR_console_io, CONSOLEIO_write, 16, (ureg)(end + 0x10000)),
           -XEN_EFAULT);
    struct xen_hvm_param *straddling = (struct xen_hvm_param *)(uptr)(end - 8);
    expect("HVMOP_get_param into a struct straddling the end of RAM -> -EFAULT",
           HC2(__HYPERVISOR_hvm_op, HVMOP_get_param, PTR(straddling)), -XEN_EFAULT);
    expect("xen_version afterwards -> 4.17", (long)xen_version(), 4 << 16 | 17);
}

int guest_main(const struct hvm_start_info *si)
{
    (void)si;
    mx_init();
    xen_via = mx_insn0 == MX_VMMCALL ? XEN_VIA_VMMCALL : XEN_VIA_VMCALL;
    if (mx_is("identity")) {
        identity();
    } else if (mx_is("disabled")) {
        expect("xen_version while disabled -> -ENOSYS", (long)xen_version(), -XEN_ENOSYS);
    } else if (mx_is("enabled")) {
        expect("xen_version(XENVER_version) -> 4.17", (long)xen_version(), 4 << 16 | 17);
    } else if (mx_is("unknown")) {
        expect("an unknown number -> -ENOSYS", HC2(UNKNOWN_NUMBER, 0, 0), -XEN_ENOSYS);
    } else if (mx_is("ring")) {
        struct hc_regs r;
        memset(&r, 0, sizeof r);
#if RT_64BIT
        r.rax = __HYPERVISOR_xen_version;
        int vec = mx_call_ring3(&r);
        long got = vec ? XEN_FAULTED - vec : (long)r.rax;
#else
        r.eax = __HYPERVISOR_xen_version;
        int vec = mx_call_ring3(&r);
        long got = vec ? XEN_FAULTED - vec : (long)(s32)r.eax;
#endif
        expect("xen_version from CPL 3 -> -EPERM", got, -XEN_EPERM);
    } else if (mx_is("denied")) {
        expect("xen_version denied by the config -> -EPERM", (long)xen_version(), -XEN_EPERM);
    } else if (mx_is("console")) {
        expect("CONSOLEIO_write -> 0",
               HC3(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof console_marker - 1,
                   PTR(console_marker)),
               0);
    } else if (mx_is("yield")) {
        expect("SCHEDOP_yield -> 0", HC2(__HYPERVISOR_sched_op, SCHEDOP_yield, 0), 0);
    } else if (mx_is("shutdown")) {
        static struct sched_shutdown reboot = {SHUTDOWN_reboot};
        identity();
        gprintf("%s: SCHEDOP_shutdown(SHUTDOWN_reboot): the VM ends here\n", GUEST_NAME);
        long got = HC2(__HYPERVISOR_sched_op, SCHEDOP_shutdown, PTR(&reboot));
        check_true("the VM ended at SCHEDOP_shutdown", false, "still running, answer %ld", got);
    } else if (mx_is("time")) {
        static u64 now[2];
        expect("HVMOP_get_time -> 0", HC2(__HYPERVISOR_hvm_op, HVMOP_get_time, PTR(&now[0])), 0);
        mx_spin(20000);
        expect("HVMOP_get_time again -> 0",
               HC2(__HYPERVISOR_hvm_op, HVMOP_get_time, PTR(&now[1])), 0);
        mx_check_clock("system time", now[0], now[1], 60000000000ull);
    } else if (mx_is("wake")) {
        if (mx_ap_waiting(WAKE_VECTOR)) {
            static struct xen_hvm_evtchn_upcall_vector up = {1, WAKE_VECTOR};
            expect("HVMOP_set_evtchn_upcall_vector for vCPU 1 -> 0",
                   HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&up)), 0);
            mx_check_ap_woken();
        }
    } else if (mx_is("bad-pointer")) {
        bad_pointers();
    } else if (mx_is("caller32")) {
        check_eq("a 32-bit caller", RT_64BIT, 0);
        identity();
        expect("xen_version(XENVER_version) -> 4.17", (long)xen_version(), 4 << 16 | 17);
        expect("an unknown number -> -ENOSYS", HC2(UNKNOWN_NUMBER, 0, 0), -XEN_ENOSYS);
        bad_pointers();
    } else {
        return mx_unknown_scenario();
    }
    return check_summary();
}
