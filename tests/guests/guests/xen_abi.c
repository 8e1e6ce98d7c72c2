/* xen_abi: checks polyvisor's xen personality from the inside (docs/abi/xen.md): the CPUID
 * leaves, the hypercall page, both calling conventions, every refusal (disabled, unknown,
 * unimplemented, denied, CPL 3), and every implemented sub-operation of xen_version,
 * console_io, sched_op, memory_op, hvm_op and vcpu_op with good and bad arguments and
 * pointers. Build it as a 64-bit PVH image (xen_abi_pvh64: native structures, 64-bit
 * registers) and a 32-bit one (xen_abi_pvh32: compat structures, results in EAX). One line
 * per check; exit status (port 0xF4) 0 only if every check passed, 1 otherwise.
 *
 * Cmdline:
 *   expect=enabled       (default) VMM config: [hypervisor] mode = "xen",
 *                        hypercalls_enabled = true; [host] instruction = "auto" (the checks
 *                        call through raw VMCALL and raw VMMCALL too)
 *   expect=disabled      VMM config: mode = "xen", hypercalls off: every call -ENOSYS
 *   expect=deny_console  as enabled, plus [hypervisor] deny = ["__HYPERVISOR_console_io"]
 *   version=4.17         the [xen] version configured (release-dependent answers follow it)
 *   domid=1              the [xen] domid configured
 *   via=page|vmcall|vmmcall  how the checks call (default page)
 *   irq=1                also check that HVMOP_set_evtchn_upcall_vector raises its vector
 *                        once (needs the VMM's interrupt delivery; one interrupt needs no
 *                        EOI, so the runtime's default eoi=none is fine)
 *   ring3=0              skip the CPL 3 checks (hosts where CPL-3 VMCALL never reaches the
 *                        VMM answer with #UD/#GP instead of -EPERM; see tests/guests/README.md)
 */
#include "xen_hc.h"

enum scenario { ENABLED, DISABLED, DENY_CONSOLE };

static enum scenario sc = ENABLED;
static u32 want_version = 0x40011;
static u32 domid = 1;
static u64 ram_top; /* end of the highest RAM range of the start info's memory map */

static u8 buf[8192] __aligned(4096);
static u8 page2[4096] __aligned(4096);
static u8 shinfo[4096] __aligned(4096);
static struct e820entry e820[8];

static bool at_least(u32 major, u32 minor)
{
    return want_version >= (major << 16 | minor);
}

/* A pointer just below the end of RAM such that `len` bytes run past it, or 0 if unknown. */
static ureg past_ram(unsigned len)
{
    if (!ram_top || ram_top > 0xC0000000ull)
        return 0;
    return (ureg)(ram_top - len / 2);
}

static bool all(const u8 *p, size_t n, u8 v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return false;
    return true;
}

/* ------------------------------------------------------------------ CPUID */

static void check_cpuid(void)
{
    u32 r[4];
    u32 base = xen_cpuid_base();
    check(base == 0x40000000, "Xen leaves at 0x40000000 (got 0x%x)", base);
    cpuid(0x40000000, 0, r);
    check(r[0] == 0x40000005, "0x40000000.EAX = 0x40000005 (got 0x%x)", r[0]);
    cpuid(0x40000001, 0, r);
    check(r[0] == want_version && !r[1] && !r[2] && !r[3], "0x40000001 = 0x%x,0,0,0 (got 0x%x)",
          want_version, r[0]);
    cpuid(0x40000002, 0, r);
    check(r[0] == 1 && r[1] == 0x40000000 && !r[2] && !r[3],
          "0x40000002 = 1, 0x40000000, 0, 0 (got %u, 0x%x, %u, %u)", r[0], r[1], r[2], r[3]);
    cpuid(0x40000003, 0, r);
    check(r[1] == 2, "0x40000003.0 EBX = 2 (TSC never emulated) (got %u)", r[1]);
    gprintf("%s: time leaf: flags 0x%x, %u kHz\n", GUEST_NAME, r[0], r[2]);
    cpuid(0x40000003, 1, r);
    gprintf("%s: time leaf: mul 0x%x shift %d\n", GUEST_NAME, r[2], (int)r[3]);
    cpuid(0x40000004, 0, r);
    check(r[0] == 0x18 && r[1] == 0 && r[2] == domid,
          "0x40000004 = VCPU_ID|DOMID present, vCPU 0, domid %u (got 0x%x, %u, %u)", domid, r[0],
          r[1], r[2]);
    cpuid(0x40000005, 0, r);
    check(!r[0] && !r[1] && !r[2] && !r[3], "0x40000005 is empty for HVM");
}

/* ------------------------------------------------------------- the page */

static void check_page(enum xen_via raw)
{
    u64 v = 1;
    int vec = rdmsr_safe(0x40000000, &v);
    check(vec == 0 && v == 0, "rdmsr 0x40000000 reads 0 (got %s, 0x%llx)",
          vec ? vector_name((unsigned)vec) : "no fault", v);
    vec = wrmsr_safe(0x40000000, PTR(xen_hypercall_page) | 0x800);
    check(vec == VEC_GP, "wrmsr with a page index -> #GP (got %s)",
          vec ? vector_name((unsigned)vec) : "none");
    if (ram_top && ram_top <= 0xFFFFF000ull) {
        vec = wrmsr_safe(0x40000000, ram_top);
        check(vec == VEC_GP, "wrmsr with a frame past RAM -> #GP (got %s)",
              vec ? vector_name((unsigned)vec) : "none");
    }
    memset(xen_hypercall_page, 0, sizeof xen_hypercall_page);
    vec = wrmsr_safe(0x40000000, PTR(xen_hypercall_page));
    check(vec == 0, "wrmsr 0x40000000 = the page -> no fault");
    const u8 *p = xen_hypercall_page;
    u8 insn = raw == XEN_VIA_VMMCALL ? 0xd9 : 0xc1;
    check(p[17 * 32] == 0xb8 && p[17 * 32 + 1] == 17 && p[17 * 32 + 7] == insn &&
              p[17 * 32 + 8] == 0xc3 && p[17 * 32 + 9] == 0xcc,
          "stub 17: mov $17,%%eax; %s; ret; int3", raw == XEN_VIA_VMMCALL ? "vmmcall" : "vmcall");
    check(p[23 * 32] == 0x0f && p[23 * 32 + 1] == 0x0b && all(p + 23 * 32 + 2, 30, 0xcc),
          "stub 23 (iret): ud2, then 0xCC");
    check(all(p + 127 * 32 + 9, 23, 0xcc), "0xCC fill to the end of the page");
}

/* ---------------------------------------------------- refusals, conventions */

static void check_disabled(void)
{
    static const unsigned numbers[] = {12, 17, 18, 24, 29, 34, 32, 0, 99};
    for (unsigned i = 0; i < ARRAY_SIZE(numbers); i++)
        EXPECT(HC2(numbers[i], 0, 0), -XEN_ENOSYS, "hypercalls off: number %u", numbers[i]);
}

static volatile long ring3_answer;
static ureg ring3_version(ureg unused)
{
    (void)unused;
    struct hc_regs r;
    memset(&r, 0, sizeof r);
#if RT_64BIT
    r.rax = __HYPERVISOR_xen_version;
    if (xen_via == XEN_VIA_PAGE)
        hypercall_via_raw(xen_hypercall_page + 17 * 32, &r);
    else if (xen_via == XEN_VIA_VMMCALL)
        hypercall_vmmcall_raw(&r);
    else
        hypercall_vmcall_raw(&r);
    ring3_answer = (long)r.rax;
#else
    r.eax = __HYPERVISOR_xen_version;
    if (xen_via == XEN_VIA_PAGE)
        hypercall_via_raw(xen_hypercall_page + 17 * 32, &r);
    else if (xen_via == XEN_VIA_VMMCALL)
        hypercall_vmmcall_raw(&r);
    else
        hypercall_vmcall_raw(&r);
    ring3_answer = (long)(s32)r.eax;
#endif
    return 0;
}

static void check_conventions(void)
{
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_version, 0), want_version, "XENVER_version");
    enum xen_via saved = xen_via;
    xen_via = XEN_VIA_VMCALL;
    EXPECT(HC2(__HYPERVISOR_xen_version, 0, 0), want_version, "raw VMCALL");
    xen_via = XEN_VIA_VMMCALL;
    EXPECT(HC2(__HYPERVISOR_xen_version, 0, 0), want_version, "raw VMMCALL");
    xen_via = saved;
    /* PV-only and unknown numbers, unimplemented rows. */
    static const unsigned unknown[] = {0, 1, 6, 23, 25, 30, 37, 43, 48, 99};
    for (unsigned i = 0; i < ARRAY_SIZE(unknown); i++) {
        /* Through the page, iret's stub is ud2. */
        bool ud2 = xen_via == XEN_VIA_PAGE && unknown[i] == __HYPERVISOR_iret;
        EXPECT(HC2(unknown[i], 0, 0), ud2 ? XEN_FAULTED - VEC_UD : -XEN_ENOSYS,
               "number %u (not an HVM hypercall%s)", unknown[i], ud2 ? ", page stub: #UD" : "");
    }
    static const unsigned unimplemented[] = {7, 13, 15, 20, 21, 26, 27, 32, 33, 35, 36, 41};
    for (unsigned i = 0; i < ARRAY_SIZE(unimplemented); i++)
        EXPECT(HC2(unimplemented[i], 0, 0), -XEN_ENOSYS, "number %u (not implemented)",
               unimplemented[i]);
#if RT_64BIT
    /* All of RAX is the number; an int argument is 32 bits. */
    EXPECT(xen_hypercall(0, 0, 0, 0, 0, 0), -XEN_ENOSYS, "number 0");
    xen_via = xen_via == XEN_VIA_PAGE ? XEN_VIA_VMCALL : xen_via;
    EXPECT(xen_hypercall(0x100000011u, 0, 0, 0, 0, 0), -XEN_ENOSYS, "RAX = 0x100000011");
    xen_via = saved;
    EXPECT(HC2(__HYPERVISOR_xen_version, 0xffffffff00000000ul, 0), want_version,
           "xen_version with cmd 0xffffffff00000000 (an int: 0)");
#endif
    if (cmdline_get_u64("ring3", 1)) {
        ring3_answer = 0;
        ureg res;
        int vec = run_in_ring3(ring3_version, 0, &res);
        if (vec)
            /* The CPU or host kernel refused the instruction before any VMM saw it (host-
               specific, see tests/guests/README.md): nothing the personality answers. */
            gprintf("%s: [skip] xen_version at CPL 3 faulted with %s before reaching the VMM\n",
                    GUEST_NAME, vector_name((unsigned)vec));
        else
            check(ring3_answer == -XEN_EPERM, "xen_version at CPL 3 -> -EPERM (got %ld)",
                  ring3_answer);
    }
}

/* --------------------------------------------------------------- xen_version */

static long xv(unsigned cmd, void *arg)
{
    return HC2(__HYPERVISOR_xen_version, cmd, PTR(arg));
}

static void check_version(void)
{
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_extraversion, buf), 0, "XENVER_extraversion");
    check(buf[15] == 0 && buf[16] == 0xaa, "extraversion: 16 bytes, NUL-terminated (\"%s\")",
          (char *)buf);
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_compile_info, buf), 0, "XENVER_compile_info");
    struct xen_compile_info *ci = (struct xen_compile_info *)buf;
    check(!strcmp(ci->compiler, "polyvisor") && all((u8 *)ci->compiler + 9, 55, 0) &&
              buf[144] == 0xaa,
          "compile_info: fixed strings, NUL-padded, 144 bytes");
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_capabilities, buf), 0, "XENVER_capabilities");
    check(!strcmp((char *)buf, "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 ") &&
              all(buf + 46, 1024 - 46, 0) && buf[1024] == 0xaa,
          "capabilities: HVM-only string padded to 1024");
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_changeset, buf), 0, "XENVER_changeset");
    check(!strcmp((char *)buf, "unavailable") && all(buf + 11, 53, 0) && buf[64] == 0xaa,
          "changeset: \"unavailable\" padded to 64");
    memset(buf, 0xaa, 16);
    EXPECT(xv(XENVER_platform_parameters, buf), 0, "XENVER_platform_parameters");
    check(all(buf, sizeof(ureg), 0) && buf[sizeof(ureg)] == 0xaa,
          "virt_start = 0, %u bytes", (unsigned)sizeof(ureg));
    struct xen_feature_info fi = {0, 0};
    EXPECT(xv(XENVER_get_features, &fi), 0, "XENVER_get_features(0)");
    check((fi.submap & 0x5) == 0x5 && !(fi.submap & (1u << 8)) && !(fi.submap & (1u << 10)),
          "features 0x%x: writable_page_tables, auto_translated_physmap, no callback vector, "
          "no pirqs", fi.submap);
    fi.submap_idx = 1;
    EXPECT(xv(XENVER_get_features, &fi), -XEN_EINVAL, "XENVER_get_features(1)");
    EXPECT(xv(XENVER_pagesize, NULL), 4096, "XENVER_pagesize(NULL)");
    EXPECT(xv(XENVER_pagesize, buf), -XEN_EINVAL, "XENVER_pagesize(non-NULL)");
    memset(buf, 0xaa, 32);
    EXPECT(xv(XENVER_guest_handle, buf), 0, "XENVER_guest_handle");
    check(all(buf, 16, 0) && buf[16] == 0xaa, "guest handle: 16 zero bytes");
    memset(buf, 0xaa, 2048);
    EXPECT(xv(XENVER_commandline, buf), 0, "XENVER_commandline");
    check(!memcmp(buf, "<denied>", 9) && buf[9] == 0xaa, "command line denied to a domU");
    EXPECT(xv(XENVER_build_id, buf), -XEN_EPERM, "XENVER_build_id (privileged)");
    EXPECT(xv(XENVER_extraversion2, NULL), at_least(4, 20) ? 2 : -XEN_ENOSYS,
           "XENVER_extraversion2 size");
    EXPECT(xv(15, buf), -XEN_ENOSYS, "xen_version sub-op 15");
    ureg bad = past_ram(16);
    if (bad)
        EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_extraversion, bad), -XEN_EFAULT,
               "XENVER_extraversion into the end of RAM");
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_capabilities, (ureg)-16), -XEN_EFAULT,
           "XENVER_capabilities at a wrapping pointer");
}

/* ----------------------------------------------------------------- console */

static void check_console(void)
{
    long deny = sc == DENY_CONSOLE ? -XEN_EPERM : 0;
    static const char line[] = GUEST_NAME ": a line through CONSOLEIO_write\n";
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof line - 1, PTR(line)), deny,
           "CONSOLEIO_write");
    if (sc == DENY_CONSOLE)
        return;
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, 0, 0), 0, "CONSOLEIO_write of nothing");
    /* 5000 bytes: more than one trap writes, so it continues by re-executing. */
    static char big[5001];
    for (unsigned i = 0; i < 5000; i++)
        big[i] = i % 100 == 99 ? '\n' : (char)('a' + i % 26);
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, 5000, PTR(big)), 0,
           "CONSOLEIO_write of 5000 bytes (50 lines of letters above)");
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, 64, (ureg)-32), -XEN_EFAULT,
           "CONSOLEIO_write from a wrapping pointer");
    long n = HC3(__HYPERVISOR_console_io, CONSOLEIO_read, 64, PTR(buf));
    check(n >= 0 && n <= 64, "CONSOLEIO_read -> 0..64 bytes (got %ld)", n);
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_read, 0x80000000u, PTR(buf)), -XEN_E2BIG,
           "CONSOLEIO_read of more than INT_MAX");
    EXPECT(HC3(__HYPERVISOR_console_io, 2, 1, PTR(buf)), -XEN_ENOSYS, "console_io command 2");
}

/* ------------------------------------------------------------------ sched_op */

static u64 xen_now(void)
{
    u64 now = 0;
    HC2(__HYPERVISOR_hvm_op, HVMOP_get_time, PTR(&now));
    return now;
}

static void check_sched(void)
{
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_yield, 0), 0, "SCHEDOP_yield");
    static u32 ports[2] = {1, 2};
    struct sched_poll p = {ports, 129, 0};
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p)), -XEN_EINVAL, "poll of 129 ports");
    p.nr_ports = 2;
    p.ports = (u32 *)(uptr)-4;
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p)), -XEN_EFAULT,
           "poll with a wrapping port array");
    p.ports = ports;
    u64 t0 = xen_now();
    p.timeout = t0 + 2000000; /* 2 ms */
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p)), 0, "poll with a 2 ms timeout");
    u64 t1 = xen_now();
    gprintf("%s: poll slept %llu us (0 when the VMM cannot time halts)\n", GUEST_NAME,
            udiv64(t1 - t0, 1000, NULL));
    check(t1 >= t0, "HVMOP_get_time does not go back");
    p.timeout = 1; /* long past */
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p)), 0, "poll with a past timeout");
    struct {
        u16 domid;
        u32 reason;
    } rs = {(u16)domid, 0};
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_remote_shutdown, PTR(&rs)), -XEN_EPERM,
           "SCHEDOP_remote_shutdown of itself");
    rs.domid = 0;
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_remote_shutdown, PTR(&rs)), -XEN_ESRCH,
           "SCHEDOP_remote_shutdown of domain 0");
    EXPECT(HC2(__HYPERVISOR_sched_op, 6, PTR(buf)), -XEN_ENOSYS, "SCHEDOP_watchdog");
    EXPECT(HC2(__HYPERVISOR_sched_op, 7, PTR(buf)), -XEN_EPERM, "SCHEDOP_pin_override");
    EXPECT(HC2(__HYPERVISOR_sched_op, 99, 0), -XEN_ENOSYS, "sched_op command 99");
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (ureg)-2), -XEN_EFAULT,
           "SCHEDOP_shutdown with a wrapping pointer");
}

/* ----------------------------------------------------------------- memory_op */

static void check_memory(void)
{
    if (ram_top)
        EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_maximum_ram_page, 0), (long)(ram_top >> 12),
               "XENMEM_maximum_ram_page");
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_maximum_ram_page | (1 << 6), 0), -XEN_EINVAL,
           "XENMEM_maximum_ram_page with a start extent");
    u16 id = DOMID_SELF;
    long cur = HC2(__HYPERVISOR_memory_op, XENMEM_current_reservation, PTR(&id));
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_maximum_reservation, PTR(&id)), cur,
           "maximum reservation = current (%ld pages)", cur);
    id = (u16)domid;
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_current_reservation, PTR(&id)), cur,
           "current reservation by own domid");
    id = 0;
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_current_reservation, PTR(&id)), -XEN_ESRCH,
           "current reservation of domain 0");

    struct xen_memory_map map = {1, e820};
    memset(e820, 0xaa, sizeof e820);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_memory_map, PTR(&map)), 0,
           "XENMEM_memory_map with room for 1");
    check(map.nr_entries == 1 && e820[0].type == 1 && ((u8 *)e820)[20] == 0xaa,
          "one 20-byte RAM entry written");
    map.nr_entries = 8;
    map.buffer = (void *)(uptr)-8;
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_memory_map, PTR(&map)), -XEN_EFAULT,
           "XENMEM_memory_map into a wrapping buffer");

    struct xen_add_to_physmap x = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 1,
                                   (unsigned long)(PTR(shinfo) >> 12)};
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), -XEN_EINVAL,
           "add_to_physmap shared_info idx 1");
    static const struct {
        unsigned space;
        long answer;
        const char *name;
    } spaces[] = {{1, -XEN_EINVAL, "grant_table"},   {2, -95, "gmfn"},
                  {3, -95, "gmfn_range"},            {4, -XEN_ENOSYS, "gmfn_foreign"},
                  {5, -13, "dev_mmio"},              {9, -XEN_EINVAL, "space 9"}};
    for (unsigned i = 0; i < ARRAY_SIZE(spaces); i++) {
        x.space = spaces[i].space;
        x.idx = 0;
        EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), spaces[i].answer,
               "add_to_physmap %s", spaces[i].name);
    }
    x.space = XENMAPSPACE_shared_info;
    x.domid = 0;
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), -XEN_ESRCH,
           "add_to_physmap for domain 0");
    x.domid = DOMID_SELF;
    memset(shinfo, 0xaa, sizeof shinfo);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), 0,
           "add_to_physmap shared_info");
    struct shared_info *s = (struct shared_info *)shinfo;
    check(s->wc_version == 2 && s->wc_sec > 1600000000u, "wallclock filled (%u s, version %u)",
          s->wc_sec, s->wc_version);
    check(s->vcpu_info[0].time.version == 2 && s->evtchn_mask[0] == 0,
          "vcpu 0 time filled, the rest zeroed");
    /* Moving it keeps the event masks. */
    s->evtchn_mask[0] = 0x5a;
    x.gpfn = (unsigned long)(PTR(page2) >> 12);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&x)), 0,
           "add_to_physmap shared_info at another frame");
    check(((struct shared_info *)page2)->evtchn_mask[0] == 0x5a, "event masks moved with it");
    EXPECT(HC2(__HYPERVISOR_memory_op, 12, 0), -XEN_ENOSYS, "XENMEM_machphys_mapping");
    EXPECT(HC2(__HYPERVISOR_memory_op, 6, PTR(buf)), -XEN_ENOSYS, "XENMEM_populate_physmap");
}

/* -------------------------------------------------------------------- hvm_op */

static long param(unsigned op, u16 dom, u32 index, u64 *value)
{
    struct xen_hvm_param p = {dom, 0, index, *value};
    long rc = HC2(__HYPERVISOR_hvm_op, op, PTR(&p));
    *value = p.value;
    return rc;
}

static volatile unsigned upcalls;
static void upcall(struct trap_frame *f)
{
    (void)f;
    upcalls++;
}

static void check_hvm(void)
{
    static const u32 zero[] = {HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_CONSOLE_PFN,
                               HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CALLBACK_IRQ};
    for (unsigned i = 0; i < ARRAY_SIZE(zero); i++) {
        u64 v = 0x1234;
        long rc = param(HVMOP_get_param, DOMID_SELF, zero[i], &v);
        check(rc == 0 && v == 0, "get_param %u -> 0, value 0 (got %ld, %llu)", zero[i], rc, v);
    }
    u64 v = 1;
    EXPECT(param(HVMOP_set_param, DOMID_SELF, HVM_PARAM_STORE_PFN, &v), -XEN_EPERM,
           "set_param STORE_PFN");
    v = 7;
    EXPECT(param(HVMOP_set_param, DOMID_SELF, HVM_PARAM_STORE_EVTCHN, &v), 0,
           "set_param STORE_EVTCHN");
    v = 0;
    EXPECT(param(HVMOP_get_param, (u16)domid, HVM_PARAM_STORE_EVTCHN, &v), 0,
           "get_param STORE_EVTCHN by own domid");
    check(v == 7, "STORE_EVTCHN reads back 7 (got %llu)", v);
    v = 1;
    EXPECT(param(HVMOP_set_param, DOMID_SELF, 35, &v), -XEN_EEXIST, "set_param ALTP2M");
    EXPECT(param(HVMOP_set_param, DOMID_SELF, 4, &v), -XEN_EINVAL, "set_param PAE_ENABLED");
    EXPECT(param(HVMOP_get_param, DOMID_SELF, 12, &v), -XEN_EPERM, "get_param IDENT_PT");
    EXPECT(param(HVMOP_get_param, DOMID_SELF, HVM_NR_PARAMS, &v), -XEN_EINVAL, "get_param 39");
    EXPECT(param(HVMOP_get_param, 0, 1, &v), -XEN_ESRCH, "get_param of domain 0");
    EXPECT(param(HVMOP_set_param, DOMID_SELF, 19, &v), -XEN_ENODEV,
           "set_param ACPI_IOPORTS_LOCATION (no PM timer)");
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_get_param, (ureg)-8), -XEN_EFAULT,
           "get_param at a wrapping pointer");
    u64 t0 = xen_now(), t1 = xen_now();
    check(t1 >= t0 && t0 > 0, "HVMOP_get_time: %llu then %llu ns", t0, t1);
    struct {
        u16 domid;
        u16 pad[3];
        u64 gpa;
    } dying = {DOMID_SELF, {0, 0, 0}, ~0ull};
    EXPECT(HC2(__HYPERVISOR_hvm_op, 9, PTR(&dying)), -XEN_EINVAL,
           "HVMOP_pagetable_dying (HAP: unsupported)");
    struct xen_hvm_evtchn_upcall_vector uv = {0, 0x0f};
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv)), -XEN_EINVAL,
           "upcall vector 0x0f");
    uv.vector = 0xf3;
    uv.vcpu = 99;
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv)), -XEN_ENOENT,
           "upcall vector for vCPU 99");
    if (cmdline_get_u64("irq", 0)) {
        set_irq_handler(0xf3, upcall);
        uv.vcpu = 0;
        EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv)), 0,
               "upcall vector 0xf3 for vCPU 0");
        sti();
        for (unsigned i = 0; i < 1000000 && !upcalls; i++)
            pause();
        cli();
        check(upcalls == 1, "vector 0xf3 raised once (got %u)", upcalls);
    }
    EXPECT(HC2(__HYPERVISOR_hvm_op, 5, 0), -XEN_ENOSYS, "HVMOP_flush_tlbs");
}

/* -------------------------------------------------------------------- vcpu_op */

static void check_vcpu(void)
{
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 0, 0), 1, "VCPUOP_is_up(0)");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 99, 0), -XEN_ENOENT, "VCPUOP_is_up(99)");
    struct vcpu_register_vcpu_info info = {PTR(buf) >> 12, 4096 - 32, 0};
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)), -XEN_ENXIO,
           "register_vcpu_info crossing the page");
    info.offset = 2;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)), -XEN_ENXIO,
           "register_vcpu_info misaligned");
    info.offset = 4096;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)),
           at_least(4, 18) ? -XEN_EINVAL : -XEN_ENXIO, "register_vcpu_info offset 4096");
    info.offset = 64;
    memset(buf, 0, 256);
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)), 0,
           "register_vcpu_info");
    check(buf[64] == 1 && buf[128] == 0 && ((struct vcpu_info *)(buf + 64))->time.version,
          "vcpu_info populated: event pending, time set, 64 bytes");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)),
           at_least(4, 18) ? -XEN_EBUSY : -XEN_EINVAL, "register_vcpu_info again");

    struct vcpu_set_singleshot_timer t = {1, VCPU_SSHOTTMR_future};
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, PTR(&t)),
           at_least(4, 18) ? 0 : -XEN_ETIME, "singleshot timer in the past with FUTURE");
    t.timeout_abs_ns = xen_now() + 1000000000ull;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, PTR(&t)), 0,
           "singleshot timer in 1 s");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_stop_singleshot_timer, 0, 0), 0,
           "stop singleshot timer");
    if (vcpus_online() > 1)
        EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_stop_singleshot_timer, 1, 0), -XEN_EINVAL,
               "stop another vCPU's timer");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, (ureg)-8), -XEN_EFAULT,
           "singleshot timer at a wrapping pointer");
    EXPECT(HC3(__HYPERVISOR_vcpu_op, 1, 0, 0), -XEN_ENOSYS, "VCPUOP_up");
}

int guest_main(const struct hvm_start_info *si)
{
    char arg[16];
    if (cmdline_get("expect", arg, sizeof arg) >= 0) {
        if (!strcmp(arg, "disabled"))
            sc = DISABLED;
        else if (!strcmp(arg, "deny_console"))
            sc = DENY_CONSOLE;
        else if (strcmp(arg, "enabled"))
            panic("unknown expect=%s", arg);
    }
    if (cmdline_get("version", arg, sizeof arg) >= 0) {
        char *dot = arg;
        u64 major, minor;
        while (*dot && *dot != '.')
            dot++;
        if (*dot)
            *dot++ = 0;
        if (!parse_u64(arg, &major) || !parse_u64(dot, &minor))
            panic("bad version");
        want_version = (u32)(major << 16 | minor);
    }
    domid = (u32)cmdline_get_u64("domid", 1);
    enum xen_via raw = xen_native_insn();
    xen_via = XEN_VIA_PAGE;
    if (cmdline_get("via", arg, sizeof arg) >= 0)
        xen_via = !strcmp(arg, "vmcall")    ? XEN_VIA_VMCALL
                  : !strcmp(arg, "vmmcall") ? XEN_VIA_VMMCALL
                                            : XEN_VIA_PAGE;
    if (si && si->version >= 1) {
        const struct hvm_memmap_table_entry *e =
            (const struct hvm_memmap_table_entry *)(uptr)si->memmap_paddr;
        for (u32 i = 0; i < si->memmap_entries; i++)
            if (e[i].type == 1 && e[i].addr + e[i].size > ram_top)
                ram_top = e[i].addr + e[i].size;
    }
    gprintf("%s: xen personality checks (%s, %s callers), expect=%s, Xen %u.%u\n", GUEST_NAME,
            rt_boot_protocol_name(), RT_64BIT ? "64-bit" : "32-bit",
            sc == ENABLED ? "enabled" : sc == DISABLED ? "disabled" : "deny_console",
            want_version >> 16, want_version & 0xffff);

    check_cpuid();
    check_page(raw);
    if (sc == DISABLED) {
        check_disabled();
    } else {
        check_conventions();
        check_version();
        check_console();
        check_sched();
        check_memory();
        check_hvm();
        check_vcpu();
        check(current_cpl() == 0, "back at CPL 0 after every call");
    }
    gprintf("%s: %u passed, %u failed\n", GUEST_NAME, xen_passed, xen_failed);
    return xen_failed ? 1 : 0;
}
