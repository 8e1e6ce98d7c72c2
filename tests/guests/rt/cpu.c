/* polyvisor test-guest runtime: start-up, GDT/IDT/TSS, traps, fault recovery, ring 3, SMP. */
#include "rt_internal.h"

struct rt_vcpu_area rt_vcpu_area[RT_MAX_VCPUS] __aligned(4096);
struct rt_cpu rt_cpus[RT_MAX_VCPUS];
const struct hvm_start_info *rt_start_info;
volatile u32 rt_boot_protocol;
volatile u64 rt_start_tsc;
volatile u32 rt_eoi_mode;
volatile u32 ap_ready[RT_MAX_VCPUS];
static volatile u32 rt_tables_ready;
static irq_handler_t irq_handlers[256];

/* ------------------------------------------------------------- tables */
#if RT_64BIT
struct tss {
    u32 reserved0;
    u64 rsp0, rsp1, rsp2;
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3;
    u16 iomap_base;
} __attribute__((packed));

struct idt_gate {
    u16 off_lo, sel;
    u8 ist, type_attr;
    u16 off_mid;
    u32 off_hi, reserved;
};
#else
struct tss {
    u16 link, r0;
    u32 esp0;
    u16 ss0, r1;
    u32 esp1;
    u16 ss1, r2;
    u32 esp2;
    u16 ss2, r3;
    u32 cr3, eip, eflags, eax, ecx, edx, ebx, esp, ebp, esi, edi;
    u16 es, r4, cs, r5, ss, r6, ds, r7, fs, r8, gs, r9, ldt, r10;
    u16 trap, iomap_base;
} __attribute__((packed));

struct idt_gate {
    u16 off_lo, sel;
    u8 zero, type_attr;
    u16 off_hi;
};
#endif

/* TSS followed by an I/O permission bitmap that allows every port at CPL 3: IOPL 3 alone
   would do on hardware, but PVM hosts check the bitmap and ignore IOPL. */
struct tss_io {
    struct tss tss;
    u8 iomap[65536 / 8];
    u8 iomap_end; /* must be 0xff */
} __attribute__((packed));

static u64 gdt[RT_GDT_ENTRIES] __aligned(16);
static struct idt_gate idt[256] __aligned(16);
static struct tss_io tss[RT_MAX_VCPUS] __aligned(128);

static u64 seg_desc(u32 base, u32 limit, u8 access, u8 flags)
{
    return (u64)(limit & 0xffff) | ((u64)(base & 0xffffff) << 16) | ((u64)access << 40) |
           ((u64)((limit >> 16) & 0xf) << 48) | ((u64)(flags & 0xf) << 52) |
           ((u64)(base >> 24) << 56);
}

static void build_tables(void)
{
    /* access: P | DPL | S | type (accessed bit preset so the CPU never writes it) */
#if RT_64BIT
    gdt[1] = seg_desc(0, 0xfffff, 0x9b, 0xa); /* KCODE: G | L */
    gdt[3] = seg_desc(0, 0xfffff, 0xfb, 0xa); /* UCODE: G | L, DPL 3 */
#else
    gdt[1] = seg_desc(0, 0xfffff, 0x9b, 0xc); /* KCODE: G | D */
    gdt[3] = seg_desc(0, 0xfffff, 0xfb, 0xc); /* UCODE: G | D, DPL 3 */
#endif
    gdt[2] = seg_desc(0, 0xfffff, 0x93, 0xc); /* KDATA */
    gdt[4] = seg_desc(0, 0xfffff, 0xf3, 0xc); /* UDATA, DPL 3 */
    gdt[5] = seg_desc(0, 0xfffff, 0x9b, 0xc); /* KCODE32 */
    for (unsigned i = 0; i < RT_MAX_VCPUS; i++) {
        struct tss *t = &tss[i].tss;
        uptr tstack = (uptr)&rt_vcpu_area[i] + RT_TSTACK_TOP;
        memset(&tss[i], 0, sizeof tss[i]);
        tss[i].iomap_end = 0xff;
#if RT_64BIT
        t->rsp0 = tstack;
#else
        t->esp0 = (u32)tstack;
        t->ss0 = RT_SEL_KDATA;
#endif
        t->iomap_base = sizeof(struct tss);
        uptr base = (uptr)t;
        unsigned idx = (RT_SEL_TSS0 >> 3) + 2 * i;
        gdt[idx] = seg_desc((u32)base, sizeof(struct tss_io) - 1, 0x89, 0);
#if RT_64BIT
        gdt[idx + 1] = (u64)base >> 32;
#else
        gdt[idx + 1] = 0;
#endif
    }
    for (unsigned v = 0; v < 256; v++) {
        uptr h = (uptr)rt_isr_stubs + 16 * v;
        struct idt_gate *g = &idt[v];
        memset(g, 0, sizeof *g);
        g->off_lo = (u16)h;
        g->sel = RT_SEL_KCODE;
        /* P | DPL | interrupt gate (64-bit or 32-bit, both type 0xE) */
        g->type_attr = (v == RT_RING3_RETURN_VECTOR) ? 0xee : 0x8e;
#if RT_64BIT
        g->off_mid = (u16)(h >> 16);
        g->off_hi = (u32)((u64)h >> 32);
#else
        g->off_hi = (u16)(h >> 16);
#endif
    }
}

static void load_tables(unsigned vcpu)
{
    struct rt_desc_ptr g = {sizeof gdt - 1, (ureg)(uptr)gdt};
    struct rt_desc_ptr i = {sizeof idt - 1, (ureg)(uptr)idt};
    rt_load_tables(&g, &i, (u16)(RT_SEL_TSS0 + 16 * vcpu));
}

/* --------------------------------------------------------------- start */
const char *rt_boot_protocol_name(void)
{
    switch (rt_boot_protocol) {
    case RT_BOOT_ELF64:
        return "ELF64 direct boot, 64-bit long mode";
    case RT_BOOT_PVH32:
        return "PVH boot, 32-bit protected mode";
    case RT_BOOT_PVH64:
        return "PVH boot, switched to 64-bit long mode";
    default:
        return "unknown boot protocol";
    }
}

__weak void guest_ap_main(unsigned vcpu)
{
    (void)vcpu;
    for (;;)
        sti_hlt();
}

static void parse_runtime_options(void)
{
    char v[16];
    rt_console_init();
    if (cmdline_get("eoi", v, sizeof v) >= 0) {
        if (!strcmp(v, "x2apic"))
            rt_eoi_mode = EOI_X2APIC;
        else if (!strcmp(v, "xapic"))
            rt_eoi_mode = EOI_XAPIC;
        else
            rt_eoi_mode = EOI_NONE;
    }
}

void rt_start(const struct hvm_start_info *si, unsigned vcpu)
{
    struct rt_cpu *c = &rt_cpus[vcpu];
    if (vcpu == 0) {
        if (si && si->magic == HVM_START_MAGIC)
            rt_start_info = si;
        parse_runtime_options();
        if (!rt_start_info)
            gprintf("rt: warning: bad hvm_start_info at %p (magic %x), no cmdline\n",
                    (const void *)si, si ? si->magic : 0);
        build_tables();
        __atomic_store_n(&rt_tables_ready, 1, __ATOMIC_RELEASE);
    } else {
        while (!__atomic_load_n(&rt_tables_ready, __ATOMIC_ACQUIRE))
            pause();
    }
    load_tables(vcpu);
    c->index = vcpu;
    __atomic_store_n(&c->online, 1, __ATOMIC_RELEASE);
    if (vcpu == 0) {
        exit_vm((u32)guest_main(rt_start_info));
    }
    __atomic_store_n(&ap_ready[vcpu], 1, __ATOMIC_RELEASE);
    guest_ap_main(vcpu);
    for (;;)
        sti_hlt();
}

/* ---------------------------------------------------------------- exit */
void exit_vm(u32 status)
{
    outl(0xF4, status);
    /* The exit device should have stopped the VM; do not spin silently. */
    console_puts("rt: exit port 0xF4 did not stop the VM\n");
    for (;;) {
        cli();
        hlt();
    }
}

void panic(const char *fmt, ...)
{
    va_list ap;
    gprintf("PANIC on vCPU %u: ", this_vcpu());
    va_start(ap, fmt);
    gvprintf(fmt, ap);
    va_end(ap);
    gprintf("\n");
    exit_vm(RT_EXIT_PANIC);
}

/* ---------------------------------------------------------------- traps */
unsigned this_vcpu(void)
{
    uptr off = (uptr)read_sp() - (uptr)rt_vcpu_area;
    return (unsigned)(off >> RT_VCPU_AREA_SHIFT); /* >= RT_MAX_VCPUS if foreign stack */
}

static const char *const exc_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS",
    "#NP", "#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31"};

const char *vector_name(unsigned vector)
{
    if (vector < 32)
        return exc_names[vector];
    if (vector == RT_FAULT_DE)
        return "#DE";
    if (vector == RT_RING3_RETURN_VECTOR)
        return "INT80";
    return "IRQ";
}

void set_irq_handler(unsigned vector, irq_handler_t fn)
{
    irq_handlers[vector & 255] = fn;
}

static __noreturn void fatal(struct trap_frame *f, unsigned vcpu)
{
    unsigned v = (unsigned)f->vector;
    gprintf("\n*** unexpected exception %s (vector %u) on vCPU %u at CPL %u\n", vector_name(v),
            v, vcpu, (unsigned)(f->cs & 3));
#if RT_64BIT
    gprintf("*** rip=%016llx err=%llx cr2=%llx rflags=%llx cs=%llx\n", f->ip, f->error,
            (u64)read_cr2(), f->flags, f->cs);
    gprintf("*** rax=%016llx rbx=%016llx rcx=%016llx rdx=%016llx\n", f->rax, f->rbx, f->rcx,
            f->rdx);
    gprintf("*** rsi=%016llx rdi=%016llx rbp=%016llx rsp=%016llx\n", f->rsi, f->rdi, f->rbp,
            f->sp);
#else
    gprintf("*** eip=%08x err=%x cr2=%x eflags=%x cs=%x\n", f->ip, f->error, (u32)read_cr2(),
            f->flags, f->cs);
    gprintf("*** eax=%08x ebx=%08x ecx=%08x edx=%08x esi=%08x edi=%08x ebp=%08x\n", f->eax,
            f->ebx, f->ecx, f->edx, f->esi, f->edi, f->ebp);
#endif
    gprintf("*** exiting with status 0x%x\n", RT_EXIT_EXCEPTION + v);
    exit_vm(RT_EXIT_EXCEPTION + v);
}

/* Puts `code` into the resume record and returns it: the stub then switches to it. */
static ureg unwind(ureg record, u32 code)
{
    ((ureg *)record)[0] = code;
    return record;
}

ureg rt_trap(struct trap_frame *f)
{
    unsigned v = (unsigned)f->vector & 255;
    unsigned vcpu = this_vcpu();
    if (vcpu >= RT_MAX_VCPUS) {
        console_puts("\n*** trap on a stack the runtime does not own\n");
        exit_vm(RT_EXIT_BAD_STACK);
    }
    struct rt_cpu *c = &rt_cpus[vcpu];
    unsigned cpl = (unsigned)(f->cs & 3);
    c->vec_count[v]++;
    c->last_vector = v;

    /* End of a run_in_ring3() call: the trampoline's `int $0x80`. Hosts that cannot deliver
       a software interrupt from CPL 3 (PVM turns it into #UD; #GP is possible too) report
       a fault at exactly that instruction, with the result still in RAX/EAX. */
    if (cpl == 3 && c->ring3_slot &&
        (v == RT_RING3_RETURN_VECTOR ||
         ((v == VEC_UD || v == VEC_GP) && f->ip == (ureg)(uptr)rt_ring3_return))) {
        ureg *rec = (ureg *)c->ring3_slot;
        ureg *result = (ureg *)rec[1];
        if (result)
#if RT_64BIT
            *result = f->rax;
#else
            *result = f->eax;
#endif
        return unwind(c->ring3_slot, 0);
    }

    if (v < 32) {
        if (v == VEC_NMI)
            return 0;
        c->last_fault.vector = v;
        c->last_fault.cpl = cpl;
        c->last_fault.ip = f->ip;
        c->last_fault.error = f->error;
        c->last_fault.cr2 = (v == VEC_PF) ? read_cr2() : 0;
        c->last_fault.count++;
        u32 code = v ? v : RT_FAULT_DE;
        if (c->in_fatal) {
            console_puts("\n*** exception while handling a fatal exception\n");
            exit_vm(RT_EXIT_DOUBLE_FATAL);
        }
        if (cpl == 3 && c->ring3_slot)
            return unwind(c->ring3_slot, code);
        if (cpl == 0 && c->try_slot)
            return unwind(c->try_slot, code);
        if (v == VEC_DB || v == VEC_BP)
            return 0; /* traps: count and continue after the instruction */
        c->in_fatal = 1;
        fatal(f, vcpu);
    }

    c->last_irq = v;
    c->irq_total++;
    if (irq_handlers[v])
        irq_handlers[v](f);
    if (v != RT_RING3_RETURN_VECTOR && rt_eoi_mode != EOI_NONE)
        apic_eoi();
    return 0;
}

/* ------------------------------------------------------- fault recovery */
int try_call(rt_fn_t fn, ureg arg, ureg *result)
{
    if (current_cpl() != 0) {
        ureg r = fn(arg);
        if (result)
            *result = r;
        return 0;
    }
    unsigned vcpu = this_vcpu();
    if (vcpu >= RT_MAX_VCPUS)
        panic("try_call on a foreign stack");
    return rt_unwind_call(&rt_cpus[vcpu].try_slot, fn, arg, result);
}

struct msr_op {
    u32 msr;
    u64 val;
};

static ureg do_rdmsr(ureg p)
{
    struct msr_op *op = (struct msr_op *)p;
    op->val = rdmsr(op->msr);
    return 0;
}

static ureg do_wrmsr(ureg p)
{
    struct msr_op *op = (struct msr_op *)p;
    wrmsr(op->msr, op->val);
    return 0;
}

int rdmsr_safe(u32 msr, u64 *val)
{
    struct msr_op op = {msr, 0};
    int r = try_call(do_rdmsr, (ureg)(uptr)&op, NULL);
    if (!r && val)
        *val = op.val;
    return r;
}

int wrmsr_safe(u32 msr, u64 val)
{
    struct msr_op op = {msr, val};
    return try_call(do_wrmsr, (ureg)(uptr)&op, NULL);
}

void apic_eoi(void)
{
    switch (rt_eoi_mode) {
    case EOI_X2APIC:
        if (wrmsr_safe(0x80B, 0) == 0)
            break;
        /* x2APIC not enabled: use the MMIO page */
        __attribute__((fallthrough));
    case EOI_XAPIC:
        *(volatile u32 *)(uptr)0xFEE000B0u = 0;
        break;
    default:
        break;
    }
}

/* ----------------------------------------------------------- hypercalls */
int hypercall_vmcall(struct hc_regs *r)
{
    return try_call(rt_hc_raw_vmcall, (ureg)(uptr)r, NULL);
}

int hypercall_vmmcall(struct hc_regs *r)
{
    return try_call(rt_hc_raw_vmmcall, (ureg)(uptr)r, NULL);
}

int hypercall_via(const void *target, struct hc_regs *r)
{
    struct rt_hc_via_ctx ctx = {(ureg)(uptr)r, (ureg)(uptr)target};
    return try_call(rt_hc_raw_via, (ureg)(uptr)&ctx, NULL);
}

void hypercall_vmcall_raw(struct hc_regs *r)
{
    rt_hc_raw_vmcall((ureg)(uptr)r);
}

void hypercall_vmmcall_raw(struct hc_regs *r)
{
    rt_hc_raw_vmmcall((ureg)(uptr)r);
}

void hypercall_via_raw(const void *target, struct hc_regs *r)
{
    struct rt_hc_via_ctx ctx = {(ureg)(uptr)r, (ureg)(uptr)target};
    rt_hc_raw_via((ureg)(uptr)&ctx);
}

/* --------------------------------------------------------------- ring 3 */
int run_in_ring3(rt_fn_t fn, ureg arg, ureg *result)
{
    if (current_cpl() != 0)
        panic("run_in_ring3 called at CPL %u", current_cpl());
    unsigned vcpu = this_vcpu();
    if (vcpu >= RT_MAX_VCPUS)
        panic("run_in_ring3 on a foreign stack");
    struct rt_ring3_ctx ctx = {(ureg)(uptr)fn, arg,
                               (ureg)((uptr)&rt_vcpu_area[vcpu] + RT_USTACK_TOP)};
    return rt_unwind_call(&rt_cpus[vcpu].ring3_slot, rt_ring3_enter, (ureg)(uptr)&ctx, result);
}

/* ------------------------------------------------------------------ SMP */
unsigned vcpus_online(void)
{
    unsigned n = 0;
    for (unsigned i = 0; i < RT_MAX_VCPUS; i++)
        n += __atomic_load_n(&rt_cpus[i].online, __ATOMIC_ACQUIRE) ? 1 : 0;
    return n;
}

unsigned wait_for_aps(unsigned n, u64 max_spins)
{
    unsigned ready = 0;
    for (u64 spin = 0;; spin++) {
        ready = 0;
        for (unsigned i = 1; i < RT_MAX_VCPUS; i++)
            ready += __atomic_load_n(&ap_ready[i], __ATOMIC_ACQUIRE) ? 1 : 0;
        if (ready >= n || spin >= max_spins)
            return ready;
        pause();
    }
}

bool wait_count(const volatile u32 *count, u32 want, unsigned vcpu, u64 max_spins)
{
    bool here = vcpu == this_vcpu();
    for (u64 spin = 0; spin < max_spins; spin++) {
        if (*count >= want)
            return true;
        if (here) {
            sti();
            pause();
            cli();
        } else {
            pause();
        }
    }
    return false;
}

struct mailbox {
    volatile ureg fn, arg, result;
    volatile u32 req, done, running;
};
static struct mailbox mailboxes[RT_MAX_VCPUS];

void ap_mailbox_loop(void)
{
    struct mailbox *m = &mailboxes[this_vcpu()];
    __atomic_store_n(&m->running, 1, __ATOMIC_RELEASE);
    u32 seen = __atomic_load_n(&m->req, __ATOMIC_ACQUIRE);
    for (;;) {
        u32 req = __atomic_load_n(&m->req, __ATOMIC_ACQUIRE);
        if (req == seen) {
            pause();
            continue;
        }
        seen = req;
        m->result = ((rt_fn_t)m->fn)(m->arg);
        __atomic_store_n(&m->done, req, __ATOMIC_RELEASE);
    }
}

int ap_call(unsigned vcpu, rt_fn_t fn, ureg arg, ureg *result, u64 max_spins)
{
    if (vcpu == 0 || vcpu >= RT_MAX_VCPUS)
        return -1;
    struct mailbox *m = &mailboxes[vcpu];
    for (u64 spin = 0; !__atomic_load_n(&m->running, __ATOMIC_ACQUIRE); spin++) {
        if (spin >= max_spins)
            return -1;
        pause();
    }
    m->fn = (ureg)(uptr)fn;
    m->arg = arg;
    u32 req = m->req + 1;
    __atomic_store_n(&m->req, req, __ATOMIC_RELEASE);
    for (u64 spin = 0; __atomic_load_n(&m->done, __ATOMIC_ACQUIRE) != req; spin++) {
        if (spin >= max_spins)
            return -1;
        pause();
    }
    if (result)
        *result = m->result;
    return 0;
}
