/* xen_boot: starts like a small Xen test kernel (XTF, a unikernel, Linux's early PVH path) and
 * checks every answer it gets from polyvisor's xen personality (docs/abi/xen.md):
 *
 *   1. finds the Xen leaves (0x40000000.. step 0x100, "XenVMMXenVMM", at least 2 leaves),
 *      reads the version, the hypercall-page MSR and the HVM leaf (vCPU id, domid);
 *   2. installs the hypercall page through that MSR and checks its stubs;
 *   3. asks xen_version for the version, extraversion, capabilities and features;
 *   4. asks hvm_op for the XenStore and console parameters (0 here: no PV platform);
 *   5. reads the memory map with memory_op and compares it with the start info's;
 *   6. maps shared_info with XENMEM_add_to_physmap and reads the wallclock and its vCPU's
 *      time, then moves its vcpu_info with VCPUOP_register_vcpu_info;
 *   7. prints a line with console_io (CONSOLEIO_write);
 *   8. shuts down with SCHEDOP_shutdown and the reason from the command line.
 *
 * Built as 64-bit PVH (xen_boot_pvh64, which is also bootable ELF64 direct), 64-bit ELF64
 * direct (xen_boot64) and 32-bit PVH (xen_boot_pvh32: the compat convention and layouts).
 * VMM config: [hypervisor] mode = "xen", hypercalls_enabled = true, [xen] defaults (version
 * 4.17, extraversion ".0", domid 1).
 *
 * Cmdline:
 *   via=page|vmcall|vmmcall   how hypercalls are made (default page; the page always holds
 *                             the CPU's own instruction)
 *   reason=poweroff|reboot|suspend|crash|watchdog|soft_reset|N   the shutdown reason
 *                             (default poweroff; N: any number, as Xen takes any u8)
 *   code=<reason>             first latch that reason with SCHEDOP_shutdown_code (it is what
 *                             the shutdown then reports)
 *   version=4.17              the Xen version the VMM is configured to show
 *   domid=1                   the domid it is configured with
 *   now=S                     the host's Unix time just before the run (checks the wallclock)
 *
 * Exit: when every check passed, the VM ends with the chosen shutdown reason (poweroff =
 * status 0); when one failed, with SHUTDOWN_crash. If SCHEDOP_shutdown itself returns, the
 * guest exits with status 0xF0 through port 0xF4.
 */
#include "xen_hc.h"

static u8 shared_info_page[4096] __aligned(4096);
static struct vcpu_info my_vcpu_info __aligned(64);
static struct e820entry e820[16];

static u32 base;

static const char *reason_names[] = {"poweroff", "reboot",   "suspend",
                                     "crash",    "watchdog", "soft_reset"};

/* A reason by name or number; false if neither. */
static bool parse_reason(const char *s, u32 *reason)
{
    for (u32 i = 0; i < ARRAY_SIZE(reason_names); i++)
        if (!strcmp(s, reason_names[i])) {
            *reason = i;
            return true;
        }
    u64 n;
    if (!parse_u64(s, &n) || n > 255)
        return false;
    *reason = (u32)n;
    return true;
}

static const char *reason_name(u32 reason)
{
    return reason < ARRAY_SIZE(reason_names) ? reason_names[reason] : "(a number)";
}

static void find_leaves(u32 want_version, u32 domid)
{
    u32 r[4];
    base = xen_cpuid_base();
    check(base == 0x40000000, "Xen leaves at 0x40000000 (found at 0x%x)", base);
    if (!base) {
        gprintf("%s: not running on Xen; giving up\n", GUEST_NAME);
        exit_vm(1);
    }
    cpuid(base, 0, r);
    check(r[0] == base + 5, "largest Xen leaf base+5 (got 0x%x)", r[0]);
    cpuid(base + 1, 0, r);
    gprintf("%s: Xen %u.%u\n", GUEST_NAME, r[0] >> 16, r[0] & 0xffff);
    check(r[0] == want_version, "CPUID base+1 version 0x%x (got 0x%x)", want_version, r[0]);
    cpuid(base + 2, 0, r);
    check(r[0] == 1 && r[1] == 0x40000000, "one hypercall page, MSR 0x40000000 (got %u, 0x%x)",
          r[0], r[1]);
    cpuid(base + 4, 0, r);
    check((r[0] & XEN_HVM_CPUID_VCPU_ID_PRESENT) && r[1] == 0,
          "HVM leaf: vCPU id present, 0 (got eax=0x%x ebx=%u)", r[0], r[1]);
    check((r[0] & XEN_HVM_CPUID_DOMID_PRESENT) && r[2] == domid,
          "HVM leaf: domid present, %u (got %u)", domid, r[2]);
}

static void install_hypercall_page(enum xen_via native)
{
    u32 r[4];
    cpuid(base + 2, 0, r);
    memset(xen_hypercall_page, 0, sizeof xen_hypercall_page);
    u64 gpa = (u64)PTR(xen_hypercall_page);
    int vec = wrmsr_safe(r[1], gpa);
    check(vec == 0, "wrmsr 0x%x = 0x%llx (hypercall page) -> no fault (got %s)", r[1], gpa,
          vec ? vector_name((unsigned)vec) : "none");
    const u8 *p = xen_hypercall_page;
    u8 insn = native == XEN_VIA_VMMCALL ? 0xd9 : 0xc1;
    bool stubs = true;
    for (unsigned i = 0; i < 128 && stubs; i++) {
        const u8 *s = p + i * 32;
        if (i == __HYPERVISOR_iret)
            stubs = s[0] == 0x0f && s[1] == 0x0b && s[2] == 0xcc;
        else
            stubs = s[0] == 0xb8 && s[1] == i && !s[2] && !s[3] && !s[4] && s[5] == 0x0f &&
                    s[6] == 0x01 && s[7] == insn && s[8] == 0xc3 && s[9] == 0xcc;
    }
    check(stubs, "hypercall page: 128 stubs mov/%s/ret, ud2 at iret, 0xCC fill",
          native == XEN_VIA_VMMCALL ? "vmmcall" : "vmcall");
    /* A page index in bits 11:0 is refused. */
    vec = wrmsr_safe(r[1], gpa | 1);
    check(vec == VEC_GP, "wrmsr with page index 1 -> #GP (got %s)",
          vec ? vector_name((unsigned)vec) : "none");
}

static void ask_version(u32 want_version)
{
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_version, 0), want_version, "XENVER_version");
    char extra[16];
    memset(extra, 0x55, sizeof extra);
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_extraversion, PTR(extra)), 0,
           "XENVER_extraversion");
    gprintf("%s: extraversion \"%s\"\n", GUEST_NAME, extra[15] == 0 ? extra : "(unterminated)");
    static char caps[1024];
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_capabilities, PTR(caps)), 0,
           "XENVER_capabilities");
    check(!strcmp(caps, "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 "),
          "capabilities \"%s\"", caps);
    struct xen_feature_info fi = {0, 0};
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_get_features, PTR(&fi)), 0,
           "XENVER_get_features(0)");
    gprintf("%s: features 0x%x\n", GUEST_NAME, fi.submap);
    check((fi.submap & (1u << XENFEAT_auto_translated_physmap)) &&
              (fi.submap & (1u << XENFEAT_writable_page_tables)),
          "auto_translated_physmap and writable_page_tables");
    check(!(fi.submap & (1u << XENFEAT_hvm_callback_vector)),
          "no hvm_callback_vector (no event channels yet)");
    EXPECT(HC2(__HYPERVISOR_xen_version, XENVER_pagesize, 0), 4096, "XENVER_pagesize");
}

static long get_param(u32 index, u64 *value)
{
    struct xen_hvm_param p = {DOMID_SELF, 0, index, 0xdeadbeef};
    long rc = HC2(__HYPERVISOR_hvm_op, HVMOP_get_param, PTR(&p));
    *value = p.value;
    return rc;
}

static void ask_params(void)
{
    static const struct {
        u32 index;
        const char *name;
        u64 want;
    } params[] = {
        {HVM_PARAM_STORE_PFN, "STORE_PFN", 0xfe},
        {HVM_PARAM_STORE_EVTCHN, "STORE_EVTCHN", 1},
        {HVM_PARAM_CONSOLE_PFN, "CONSOLE_PFN", 0xff},
        {HVM_PARAM_CONSOLE_EVTCHN, "CONSOLE_EVTCHN", 2},
    };
    for (unsigned i = 0; i < ARRAY_SIZE(params); i++) {
        u64 v = 1;
        long rc = get_param(params[i].index, &v);
        check(rc == 0 && v == params[i].want, "HVMOP_get_param %s -> 0, value 0x%llx (got %ld, 0x%llx)",
              params[i].name, params[i].want, rc, v);
    }
}

static void ask_memory_map(const struct hvm_start_info *si)
{
    struct xen_memory_map map = {ARRAY_SIZE(e820), e820};
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_memory_map, PTR(&map)), 0, "XENMEM_memory_map");
    u64 ram = 0, top = 0;
    for (unsigned i = 0; i < map.nr_entries && i < ARRAY_SIZE(e820); i++) {
        gprintf("%s: e820 %016llx-%016llx type %u\n", GUEST_NAME, e820[i].addr,
                e820[i].addr + e820[i].size - 1, e820[i].type);
        if (e820[i].type == 1) {
            ram += e820[i].size;
            if (e820[i].addr + e820[i].size > top)
                top = e820[i].addr + e820[i].size;
        }
    }
    check(map.nr_entries >= 1 && ram > 0, "memory map has RAM (%u entries)", map.nr_entries);
    check(top > PTR(shared_info_page), "our image lies in the reported RAM");
    bool same = false;
    if (si && si->version >= 1 && si->memmap_entries) {
        const struct hvm_memmap_table_entry *e =
            (const struct hvm_memmap_table_entry *)(uptr)si->memmap_paddr;
        same = map.nr_entries == si->memmap_entries;
        for (u32 i = 0; same && i < si->memmap_entries; i++)
            same = e[i].addr == e820[i].addr && e[i].size == e820[i].size &&
                   e[i].type == e820[i].type;
    }
    check(same, "the same map as the start info's (%u entries)", si ? si->memmap_entries : 0);
    long max_page = HC2(__HYPERVISOR_memory_op, XENMEM_maximum_ram_page, 0);
    check(max_page > 0 && (u64)max_page << 12 == top, "XENMEM_maximum_ram_page 0x%lx: RAM's end",
          max_page);
    u16 self = DOMID_SELF;
    long pages = HC2(__HYPERVISOR_memory_op, XENMEM_current_reservation, PTR(&self));
    check(pages == max_page, "current reservation %ld pages: all guest memory", pages);
}

static void map_shared_info(u32 want_version)
{
    struct xen_add_to_physmap xatp = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 0,
                                      (unsigned long)(PTR(shared_info_page) >> 12)};
    memset(shared_info_page, 0xaa, sizeof shared_info_page);
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&xatp)), 0,
           "XENMEM_add_to_physmap(shared_info) at 0x%lx", xatp.gpfn);
    volatile struct shared_info *s = (volatile struct shared_info *)shared_info_page;
    u32 v = s->wc_version;
    check(!(v & 1) && v != 0, "wallclock version even and set (%u)", v);
    check(s->wc_sec > 1600000000u, "wallclock %u.%09u s since 1970", s->wc_sec, s->wc_nsec);
    u64 now = cmdline_get_u64("now", 0);
    if (now)
        check(s->wc_sec + 5 >= now && s->wc_sec <= now + 60,
              "the wallclock is the host's time at the VM's start (%u s; host: %llu s)", s->wc_sec,
              now);
    volatile struct vcpu_time_info *t = &s->vcpu_info[0].time;
    check(!(t->version & 1) && t->version, "vcpu_info[0].time version even and set (%u)",
          t->version);
    gprintf("%s: system time %llu ns at TSC %llu, mul 0x%x shift %d flags 0x%x\n", GUEST_NAME,
            t->system_time, t->tsc_timestamp, t->tsc_to_system_mul, t->tsc_shift, t->flags);
    check(s->evtchn_mask[0] == 0 && s->evtchn_pending[0] == 0, "event bits start clear");

    struct vcpu_register_vcpu_info info = {(u64)(PTR(&my_vcpu_info) >> 12),
                                           (u32)(PTR(&my_vcpu_info) & 4095), 0};
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)), 0,
           "VCPUOP_register_vcpu_info at 0x%lx", (unsigned long)PTR(&my_vcpu_info));
    check(my_vcpu_info.evtchn_upcall_pending == 1 && my_vcpu_info.evtchn_pending_sel == ~0ul,
          "vcpu_info moved with a spurious event pending");
    check(my_vcpu_info.time.version && !(my_vcpu_info.time.version & 1),
          "vcpu_info time filled");
    /* Once per vCPU: -EINVAL before Xen 4.18 (map_vcpu_info), -EBUSY since (map_guest_area). */
    long again = want_version >= 0x40012 ? -XEN_EBUSY : -XEN_EINVAL;
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, PTR(&info)), again,
           "second VCPUOP_register_vcpu_info");
}

static void say_hello(void)
{
    static const char msg[] = "hello from " GUEST_NAME " through console_io\n";
    EXPECT(HC3(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof msg - 1, PTR(msg)), 0,
           "CONSOLEIO_write");
}

int guest_main(const struct hvm_start_info *si)
{
    char buf[16];
    /* The page holds the CPU's own instruction, whichever way the calls are made. */
    enum xen_via native = xen_native_insn();
    xen_via = XEN_VIA_PAGE;
    if (cmdline_get("via", buf, sizeof buf) >= 0) {
        if (!strcmp(buf, "vmcall"))
            xen_via = XEN_VIA_VMCALL;
        else if (!strcmp(buf, "vmmcall"))
            xen_via = XEN_VIA_VMMCALL;
        else if (strcmp(buf, "page"))
            panic("unknown via=%s", buf);
    }
    u32 reason = SHUTDOWN_poweroff;
    if (cmdline_get("reason", buf, sizeof buf) >= 0 && !parse_reason(buf, &reason))
        panic("unknown reason=%s", buf);
    u32 code = 0;
    bool latch = cmdline_get("code", buf, sizeof buf) >= 0;
    if (latch && !parse_reason(buf, &code))
        panic("unknown code=%s", buf);
    u32 want_version = 0x40011;
    if (cmdline_get("version", buf, sizeof buf) >= 0) {
        u64 major = 0, minor = 0;
        char *dot = buf;
        while (*dot && *dot != '.')
            dot++;
        if (*dot)
            *dot++ = 0;
        if (!parse_u64(buf, &major) || !parse_u64(dot, &minor))
            panic("bad version=%s", buf);
        want_version = (u32)(major << 16 | minor);
    }
    u32 domid = (u32)cmdline_get_u64("domid", 1);

    gprintf("%s: booting as a Xen HVM guest (%s, %s)\n", GUEST_NAME, rt_boot_protocol_name(),
            RT_64BIT ? "64-bit" : "32-bit");
    find_leaves(want_version, domid);
    install_hypercall_page(native);
    ask_version(want_version);
    ask_params();
    ask_memory_map(si);
    map_shared_info(want_version);
    say_hello();
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_yield, 0), 0, "SCHEDOP_yield");

    if (latch) {
        struct sched_shutdown sc = {code};
        EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_shutdown_code, PTR(&sc)), 0,
               "SCHEDOP_shutdown_code(%u %s)", code, reason_name(code));
        struct sched_shutdown other = {SHUTDOWN_poweroff};
        EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_shutdown_code, PTR(&other)), 0,
               "a second SCHEDOP_shutdown_code (the first one stays)");
    }
    if (xen_failed && latch) {
        /* The latched reason would win: report the failure through the exit port. */
        check_summary();
        exit_vm(1);
    }
    check_summary_with("; SCHEDOP_shutdown(%u %s)%s", xen_failed ? SHUTDOWN_crash : reason,
                       reason_name(xen_failed ? SHUTDOWN_crash : reason),
                       latch ? ", latched code wins" : "");
    struct sched_shutdown sd = {xen_failed ? SHUTDOWN_crash : reason};
    long rc = HC2(__HYPERVISOR_sched_op, SCHEDOP_shutdown, PTR(&sd));
    gprintf("%s: SCHEDOP_shutdown returned %ld\n", GUEST_NAME, rc);
    return 0xF0;
}
