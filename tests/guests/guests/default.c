/* default: the guest polyvisor runs when no other is given (ELF64 direct boot).
 *
 * Detects its hypervisor the way a real OS does (CPUID 0x40000000.. in 0x100 steps),
 * prints identity and feature leaves, makes one harmless hypercall in the detected ABI
 * and prints the raw answer (a #UD is an expected answer: hypercalls are disabled by
 * default). Exits 0.
 *
 * Cmdline: insn=vmcall|vmmcall (default: by CPU vendor), hypercall=0 (skip the call).
 */
#include "guest.h"

enum hv_kind { HV_NONE, HV_BHYVE, HV_KVM, HV_HYPERV, HV_XEN };

struct hv_sig {
    const char sig[13];
    enum hv_kind kind;
    const char *name;
};

static const struct hv_sig known[] = {
    {"bhyve bhyve ", HV_BHYVE, "bhyve"},
    {"KVMKVMKVM\0\0\0", HV_KVM, "KVM"},
    {"Microsoft Hv", HV_HYPERV, "Hyper-V"},
    {"XenVMMXenVMM", HV_XEN, "Xen"},
};

#define HV_MSR_GUEST_OS_ID 0x40000000u
#define HV_MSR_HYPERCALL 0x40000001u
/* open-source OS (bit 63), vendor/OS fields left 0, "build" 0x504f4c59 ("POLY") */
#define POLYVISOR_GUEST_OS_ID 0x8100000050504f4cULL

static u8 hv_hypercall_page[4096] __aligned(4096);

static void printable(const void *src, char out[13])
{
    memcpy(out, src, 12);
    out[12] = 0;
    for (int i = 0; i < 12; i++)
        if (out[i] == 0)
            out[i] = ' ';
        else if (out[i] < 0x20 || out[i] > 0x7e)
            out[i] = '.';
    for (int i = 11; i >= 0 && out[i] == ' '; i--)
        out[i] = 0;
}

static void print_result(const char *insn, int vec, u64 rax)
{
    if (vec == VEC_UD)
        gprintf("  answer:    %s faulted with #UD: hypercalls are disabled (the default)\n", insn);
    else if (vec)
        gprintf("  answer:    %s faulted with %s (vector %d)\n", insn, vector_name((unsigned)vec),
                vec == RT_FAULT_DE ? 0 : vec);
    else
        gprintf("  answer:    rax = 0x%llx (%lld)\n", rax, (s64)rax);
}

static void hypercall_hyperv(void)
{
    int r = wrmsr_safe(HV_MSR_GUEST_OS_ID, POLYVISOR_GUEST_OS_ID);
    gprintf("  setup:     wrmsr GUEST_OS_ID (0x40000000) = 0x%llx -> %s\n", POLYVISOR_GUEST_OS_ID,
            r ? vector_name((unsigned)r) : "ok");
    if (r) {
        gprintf("  answer:    no hypercall made (Hyper-V MSRs are not available)\n");
        return;
    }
    /* Fill with ud2 so that an unpopulated page faults instead of running zeros. */
    for (unsigned i = 0; i < sizeof hv_hypercall_page; i += 2) {
        hv_hypercall_page[i] = 0x0f;
        hv_hypercall_page[i + 1] = 0x0b;
    }
    u64 msr = (u64)(uptr)hv_hypercall_page | 1;
    r = wrmsr_safe(HV_MSR_HYPERCALL, msr);
    gprintf("  setup:     wrmsr HYPERCALL (0x40000001) = 0x%llx -> %s\n", msr,
            r ? vector_name((unsigned)r) : "ok");
    if (r) {
        gprintf("  answer:    no hypercall made (hypercall page not enabled)\n");
        return;
    }
    const u8 *p = hv_hypercall_page;
    bool populated = !(p[0] == 0x0f && p[1] == 0x0b && p[2] == 0x0f && p[3] == 0x0b);
    gprintf("  page:      0x%lx: %02x %02x %02x %02x %02x %02x%s\n", (unsigned long)(uptr)p, p[0],
            p[1], p[2], p[3], p[4], p[5], populated ? "" : " (not populated by the hypervisor)");
    struct hc_regs regs = {0};
    regs.rcx = 0x10008; /* HvCallNotifyLongSpinWait, fast */
    regs.rdx = 1;       /* spin count */
    gprintf("  call:      through the hypercall page, rcx=0x%llx (HvCallNotifyLongSpinWait, "
            "fast) rdx=%llu\n", regs.rcx, regs.rdx);
    int vec = hypercall_via(hv_hypercall_page, &regs);
    print_result("the hypercall page", vec, regs.rax);
    if (!vec)
        gprintf("             (Hyper-V status 0x%llx%s)\n", regs.rax & 0xffff,
                (regs.rax & 0xffff) == 0 ? ": HV_STATUS_SUCCESS" : "");
}

int guest_main(const struct hvm_start_info *si)
{
    u32 r[4];
    char vendor[13], sig[13], buf[16];

    gprintf("\n");
    gprintf("polyvisor default guest\n");
    gprintf("=======================\n");
    gprintf("boot:        %s, %u vCPU%s online\n", rt_boot_protocol_name(), vcpus_online(),
            vcpus_online() == 1 ? "" : "s");
    gprintf("cmdline:     \"%s\"\n", cmdline());
    if (si && si->version >= 1 && si->memmap_paddr && si->memmap_entries) {
        const struct hvm_memmap_table_entry *e =
            (const struct hvm_memmap_table_entry *)(uptr)si->memmap_paddr;
        u64 ram = 0;
        for (u32 i = 0; i < si->memmap_entries; i++)
            if (e[i].type == 1)
                ram += e[i].size;
        gprintf("memory:      %llu MiB of RAM in a %u-entry memory map\n", ram >> 20,
                si->memmap_entries);
    }

    cpuid(0, 0, r);
    memcpy(vendor, &r[1], 4);
    memcpy(vendor + 4, &r[3], 4);
    memcpy(vendor + 8, &r[2], 4);
    vendor[12] = 0;
    u32 max_basic = r[0];
    cpuid(1, 0, r);
    bool hv_bit = (r[2] >> 31) & 1;
    gprintf("cpu:         vendor \"%s\", max basic leaf 0x%x, family/model/stepping %x/%x/%x\n",
            vendor, max_basic, ((r[0] >> 8) & 0xf) + ((r[0] >> 20) & 0xff),
            ((r[0] >> 4) & 0xf) | ((r[0] >> 12) & 0xf0), r[0] & 0xf);
    gprintf("             hypervisor-present bit (CPUID.1:ECX[31]) = %u\n", hv_bit);

    /* scan the hypervisor leaves */
    const struct hv_sig *found = NULL;
    u32 base = 0, max_leaf = 0;
    gprintf("\nhypervisor CPUID leaves (0x40000000..0x4000ff00):\n");
    unsigned listed = 0;
    for (u32 b = 0x40000000; b <= 0x4000ff00; b += 0x100) {
        cpuid(b, 0, r);
        const struct hv_sig *k = NULL;
        for (unsigned i = 0; i < ARRAY_SIZE(known); i++)
            if (!memcmp(&r[1], known[i].sig, 12))
                k = &known[i];
        /* list known signatures, and unknown ones whose max leaf looks like a range */
        if (!k && !(r[0] >= b && r[0] <= b + 0xff && (r[1] | r[2] | r[3])))
            continue;
        printable(&r[1], sig);
        gprintf("  0x%08x: signature \"%s\", max leaf 0x%08x%s%s\n", b, sig, r[0],
                k ? " -> " : " (unknown)", k ? k->name : "");
        listed++;
        if (k && !found) {
            found = k;
            base = b;
            max_leaf = r[0] < b ? b : r[0];
        }
    }
    if (!listed)
        gprintf("  none\n");
    if (!found) {
        gprintf("\nno known hypervisor signature found; no hypercall made\n");
        gprintf("\ndefault guest done, exiting with status 0\n");
        return 0;
    }

    gprintf("\nidentity:    %s (signature leaf 0x%08x, max leaf 0x%08x)\n", found->name, base,
            max_leaf);
    gprintf("features:\n");
    u32 last = max_leaf;
    if (last > base + 0x0f)
        last = base + 0x0f;
    for (u32 l = base + 1; l <= last; l++) {
        cpuid(l, 0, r);
        gprintf("  0x%08x: eax=0x%08x ebx=0x%08x ecx=0x%08x edx=0x%08x\n", l, r[0], r[1], r[2],
                r[3]);
    }
    if (max_leaf > last)
        gprintf("  (%u more leaves not shown)\n", max_leaf - last);
    if (max_leaf >= base + 1) {
        cpuid(base + 1, 0, r);
        if (found->kind == HV_XEN)
            gprintf("  Xen version %u.%u\n", r[0] >> 16, r[0] & 0xffff);
        if (found->kind == HV_HYPERV) {
            char iface[5];
            memcpy(iface, &r[0], 4);
            iface[4] = 0;
            gprintf("  Hyper-V interface \"%s\"\n", iface);
        }
    }

    /* one harmless hypercall */
    bool amd = !strcmp(vendor, "AuthenticAMD") || !strcmp(vendor, "HygonGenuine");
    bool use_vmmcall = amd;
    const char *why = amd ? "AMD/Hygon CPU" : "non-AMD CPU";
    if (cmdline_get("insn", buf, sizeof buf) >= 0) {
        if (!strcmp(buf, "vmmcall")) {
            use_vmmcall = true;
            why = "cmdline insn=vmmcall";
        } else if (!strcmp(buf, "vmcall")) {
            use_vmmcall = false;
            why = "cmdline insn=vmcall";
        }
    }
    const char *insn = use_vmmcall ? "VMMCALL" : "VMCALL";
    gprintf("\nhypercall (%s ABI):\n", found->name);
    if (cmdline_get_u64("hypercall", 1) == 0) {
        gprintf("  skipped (cmdline hypercall=0)\n");
        gprintf("\ndefault guest done, exiting with status 0\n");
        return 0;
    }
    if (found->kind == HV_HYPERV) {
        hypercall_hyperv();
    } else {
        struct hc_regs regs = {0};
        const char *what = "";
        switch (found->kind) {
        case HV_BHYVE:
            regs.rax = 0; /* VMCALL_PROTOTYPE */
            what = "rax=0 (bhyve PROTOTYPE)";
            break;
        case HV_KVM:
            regs.rax = 1; /* KVM_HC_VAPIC_POLL_IRQ */
            what = "rax=1 (KVM_HC_VAPIC_POLL_IRQ)";
            break;
        case HV_XEN:
            regs.rax = 17; /* __HYPERVISOR_xen_version */
            regs.rdi = 0;  /* XENVER_version */
            regs.rsi = 0;
            what = "rax=17 (xen_version) rdi=0 (XENVER_version) rsi=0";
            break;
        default:
            break;
        }
        gprintf("  call:      %s (%s), %s\n", insn, why, what);
        int vec = use_vmmcall ? hypercall_vmmcall(&regs) : hypercall_vmcall(&regs);
        print_result(insn, vec, regs.rax);
        if (!vec && found->kind == HV_XEN && (s64)regs.rax >= 0)
            gprintf("             (Xen version %llu.%llu)\n", (regs.rax >> 16) & 0xffff,
                    regs.rax & 0xffff);
    }
    gprintf("\ndefault guest done, exiting with status 0\n");
    return 0;
}
