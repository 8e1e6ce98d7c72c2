/* bhyve: checks polyvisor's bhyve personality from the inside (docs/abi/bhyve.md): CPUID,
 * every row of the hypercall table from ring 0 and ring 3, the refusals, both instructions,
 * the DTrace calls with good and bad pointers, and the 4096-probe limit. Built as a 64-bit
 * image (the full register width) and as a 32-bit PVH image (32-bit callers: the same
 * registers at 32 bits, results truncated). One line per check; exit status 0 only if every
 * check passed, 1 otherwise.
 *
 * The guest models what the host must answer to every call it makes (`model()` below: the
 * order of the personality's checks plus the host facts the command line gives) and checks
 * each answer against it. It also keeps a tally of what the host must have counted, and
 * prints it with the probe events and report lines the host must have recorded; the host
 * test (vmm/tests/abi_bhyve.rs) compares those with what it really recorded.
 *
 * Cmdline:
 *   expect=enabled      (default) VMM config: [hypervisor] hypercalls_enabled = true
 *   expect=disabled     VMM config: hypercalls off (the default config)
 *   expect=freebsd15    VMM config: [bhyve] cpuid_leaf = "freebsd15" (hypercalls on or off)
 *   expect=deny_probe   VMM config: hypercalls_enabled = true,
 *                       [hypervisor] deny = ["HYPERCALL_DTRACE_PROBE"]
 *   insn=both|vmcall|vmmcall
 *                       which instructions the VMM accepts ([host] instruction; default both):
 *                       the ABI is checked with those, the other one must raise #UD
 *   cpl3=both|vmmcall|vmcall|none
 *                       which instructions this host traps at CPL 3 (polyvisor host-check;
 *                       default both). An instruction that is not trapped is called once at
 *                       CPL 3 and what the host did is printed ("host: ..."), not checked
 *   limit=0             skip the 4096-probe limit check (it makes ~4100 hypercalls)
 *   vcpus=2             fire one probe from vCPU 1 (the event must record vCPU 1)
 *
 * At the end the guest prints what the host must have recorded:
 *   expect host counters: hypercalls=N disabled=N unknown=N
 *   expect host row R: calls=N errors=N denied=N wrong_ring=N     (R = 0..6)
 *   expect host report lines: N        followed by N "expect host report: <line>"
 *   expect probe event: id=N thread=0xN vcpu=N name="..."   (one per PROBE answered SUCCESS)
 */
#include "guest.h"

/* bhyve_hypercall.h */
#define HYPERCALL_PROTOTYPE 0
#define HYPERCALL_DTRACE_PROBE_CREATE 1
#define HYPERCALL_DTRACE_PROBE 2
#define HYPERCALL_DTRACE_RESERVED1 3
#define HYPERCALL_DTRACE_RESERVED4 6
#define HYPERCALL_INDEX_MAX 7
#define HYPERCALL_RET_SUCCESS 0
#define HYPERCALL_RET_ERROR 1

#define MAX_PROBE_NAME 128
#define MAX_PROBES 4096
#define ROWS HYPERCALL_INDEX_MAX

enum insn { VMCALL = 0, VMMCALL = 1 };
static const char *const insn_name[2] = {"VMCALL", "VMMCALL"};

enum scenario { ENABLED, DISABLED, FREEBSD15, DENY_PROBE };
static const char *const scenario_name[] = {"enabled", "disabled", "freebsd15", "deny_probe"};

/* The configuration, from the command line. */
static enum scenario sc = ENABLED;
static bool accepted[2] = {true, true};     /* insn= */
static bool cpl3_trapped[2] = {true, true}; /* cpl3= */

/* ------------------------------------------------------------ the model */

/* What the host does with a call, in the order the VMM and the personality decide it. */
enum host_does {
    H_NOT_TRAPPED, /* this host does not bring the call to the VMM (CPL 3 only) */
    H_INSN_UD,     /* [host] instruction refuses the instruction: #UD, not dispatched */
    H_DISABLED,    /* hypercalls off (or freebsd15 leaf): #UD */
    H_UNKNOWN,     /* no row (>= INDEX_MAX) or a row without a handler (reserved): #UD */
    H_DENIED,      /* [hypervisor] deny: #UD */
    H_WRONG_RING,  /* the row does not allow the caller's ring: RAX = ERROR */
    H_SERVE,       /* the handler answers */
};
static const char *const host_does_name[] = {
    "not trapped",          "refused instruction", "hypercalls off", "reserved or >= INDEX_MAX",
    "denied by the config", "ring 0 only",         "served",
};

static enum host_does model(unsigned cpl, enum insn insn, ureg nr)
{
    if (cpl == 3 && !cpl3_trapped[insn])
        return H_NOT_TRAPPED;
    if (!accepted[insn])
        return H_INSN_UD;
    if (sc == DISABLED || sc == FREEBSD15)
        return H_DISABLED;
    if (nr >= HYPERCALL_INDEX_MAX)
        return H_UNKNOWN;
    if (sc == DENY_PROBE && nr == HYPERCALL_DTRACE_PROBE)
        return H_DENIED; /* checked before the ring */
    if (cpl != 0 && nr != HYPERCALL_PROTOTYPE)
        return H_WRONG_RING; /* checked before "unimplemented" */
    if (nr >= HYPERCALL_DTRACE_RESERVED1)
        return H_UNKNOWN;
    return H_SERVE;
}

/* What the host must have counted (RunReport::stats.hypercalls, ::refusals, ::rows). */
static struct {
    unsigned dispatched, disabled, unknown;
    unsigned calls[ROWS], errors[ROWS], denied[ROWS], wrong_ring[ROWS];
} tally;

static void count(enum host_does h, ureg nr, ureg rax)
{
    if (h == H_NOT_TRAPPED || h == H_INSN_UD)
        return;
    tally.dispatched++;
    switch (h) {
    case H_DISABLED:
        tally.disabled++;
        break;
    case H_UNKNOWN:
        tally.unknown++;
        break;
    case H_DENIED:
        tally.denied[nr]++;
        break;
    case H_WRONG_RING:
        tally.wrong_ring[nr]++;
        break;
    case H_SERVE:
        tally.calls[nr]++;
        tally.errors[nr] += rax == HYPERCALL_RET_ERROR;
        break;
    default:
        break;
    }
}

/* The first instruction the VMM accepts (the ABI checks at CPL 0 use it), and the n-th one
 * of those that are accepted, so that loops use both when both are. */
static enum insn insn_at(unsigned n)
{
    if (accepted[VMCALL] && accepted[VMMCALL])
        return n & 1 ? VMMCALL : VMCALL;
    return accepted[VMCALL] ? VMCALL : VMMCALL;
}

/* ------------------------------------------------------------ calling */

/* What a hypercall did: the fault vector (0 = none), RAX and RDI afterwards. */
struct answer {
    int vec;
    ureg rax, rdi;
};

static void describe(const struct answer *a, char *buf, size_t len)
{
    if (a->vec)
        gsnprintf(buf, len, "%s", vector_name((unsigned)a->vec));
    else
        gsnprintf(buf, len, "rax=0x%lx rdi=0x%lx", (unsigned long)a->rax, (unsigned long)a->rdi);
}

static void load(struct hc_regs *r, ureg nr, ureg a0, ureg a1, ureg a2)
{
    memset(r, 0, sizeof *r);
#if RT_64BIT
    r->rax = nr;
    r->rdi = a0;
    r->rsi = a1;
    r->rdx = a2;
    r->rcx = 0x5a5a5a5a; /* not an argument of any bhyve call */
#else
    r->eax = nr;
    r->edi = a0;
    r->esi = a1;
    r->edx = a2;
    r->ecx = 0x5a5a5a5a;
#endif
}

#if RT_64BIT
#define RAX(r) ((r).rax)
#define RDI(r) ((r).rdi)
#else
#define RAX(r) ((r).eax)
#define RDI(r) ((r).edi)
#endif

/* A hypercall at CPL 0 with fault recovery. */
static struct answer hc0(enum insn insn, ureg nr, ureg a0, ureg a1, ureg a2)
{
    struct hc_regs r;
    load(&r, nr, a0, a1, a2);
    struct answer a = {0, 0, 0};
    a.vec = insn == VMMCALL ? hypercall_vmmcall(&r) : hypercall_vmcall(&r);
    if (!a.vec) {
        a.rax = RAX(r);
        a.rdi = RDI(r);
    }
    return a;
}

/* A hypercall at CPL 3: the parameters travel in a global the ring-3 code reads. */
static volatile struct {
    enum insn insn;
    ureg nr, a0, a1, a2;
    ureg rdi;
} r3;

static ureg ring3_call(ureg unused)
{
    (void)unused;
    struct hc_regs r;
    load(&r, r3.nr, r3.a0, r3.a1, r3.a2);
    if (r3.insn == VMMCALL)
        hypercall_vmmcall_raw(&r); /* a fault ends the ring-3 run with its vector */
    else
        hypercall_vmcall_raw(&r);
    r3.rdi = RDI(r);
    return RAX(r);
}

static struct answer hc3(enum insn insn, ureg nr, ureg a0, ureg a1, ureg a2)
{
    r3.insn = insn;
    r3.nr = nr;
    r3.a0 = a0;
    r3.a1 = a1;
    r3.a2 = a2;
    r3.rdi = 0;
    ureg res = 0;
    struct answer a = {0, 0, 0};
    a.vec = run_in_ring3(ring3_call, 0, &res);
    if (!a.vec) {
        a.rax = res;
        a.rdi = r3.rdi;
    }
    return a;
}

static struct answer hc_at(unsigned cpl, enum insn insn, ureg nr, ureg a0, ureg a1, ureg a2)
{
    return cpl ? hc3(insn, nr, a0, a1, a2) : hc0(insn, nr, a0, a1, a2);
}

/* Checks an answer against the model. `served` is the RAX the handler must give when the
 * call is served. Counts the call. Returns whether the answer was the expected one. */
static bool judge(enum host_does h, struct answer a, unsigned cpl, enum insn insn, ureg nr,
                  ureg served, const char *what)
{
    char got[64], want[32];
    bool ok;
    describe(&a, got, sizeof got);
    if (h == H_SERVE || h == H_WRONG_RING) {
        ureg rax = h == H_SERVE ? served : HYPERCALL_RET_ERROR;
        gsnprintf(want, sizeof want, "RAX=%lu", (unsigned long)rax);
        ok = a.vec == 0 && a.rax == rax;
        count(h, nr, rax);
    } else {
        gsnprintf(want, sizeof want, "#UD");
        ok = a.vec == VEC_UD;
        count(h, nr, 0);
    }
    check(ok, "%s, %s at CPL %u -> %s (%s) (got %s)", what, insn_name[insn], cpl, want,
          host_does_name[h], got);
    return ok;
}

/* Makes the call (unless this host cannot trap it) and checks the answer. */
static struct answer call(unsigned cpl, enum insn insn, ureg nr, ureg a0, ureg a1, ureg a2,
                          ureg served, const char *what)
{
    struct answer a = {-1, 0, 0};
    enum host_does h = model(cpl, insn, nr);
    if (h == H_NOT_TRAPPED)
        return a;
    a = hc_at(cpl, insn, nr, a0, a1, a2);
    judge(h, a, cpl, insn, nr, served, what);
    return a;
}

/* ------------------------------------------------------------------ CPUID */

static void check_cpuid(void)
{
    u32 r[4];
    cpuid(0x40000000, 0, r);
    check(r[0] == 0x40000001, "CPUID 0x40000000.EAX = 0x40000001 (got 0x%x)", r[0]);
    check(r[1] == 0x76796862 && r[2] == 0x68622065 && r[3] == 0x20657679,
          "CPUID 0x40000000 signature \"bhyve bhyve \" (got %08x %08x %08x)", r[1], r[2], r[3]);
    cpuid(0x40000001, 0, r);
    /* review: 1 = enabled, 0 = disabled; FreeBSD 15: CPUID_BHYVE_FEAT_EXT_DEST_ID = bit 0 */
    u32 want = sc == DISABLED ? 0 : 1;
    check(r[0] == want, "CPUID 0x40000001.EAX = %u (%s) (got 0x%x)", want,
          sc == FREEBSD15 ? "FreeBSD 15: EXT_DEST_ID"
          : want          ? "review: hypercalls enabled"
                          : "review: hypercalls disabled",
          r[0]);
    check(r[1] == 0 && r[2] == 0 && r[3] == 0, "CPUID 0x40000001 EBX=ECX=EDX=0 (got %x %x %x)",
          r[1], r[2], r[3]);
}

/* ------------------------------------------------------------ every row */

static char name_buf[2 * MAX_PROBE_NAME + 16];
static const char name_one[] = "guest:bhyve:main:one";
static const char name_two[] = "guest:bhyve:main:two";
static u64 probe_args[5] = {10, 20, 30, 0x8000000000000001ull, 50};
#define THREAD_ONE 0x1001
#if RT_64BIT
#define THREAD_TWO 0x7000000000001002ull /* RDX is read at full width */
#else
#define THREAD_TWO 0x1002
#endif

static ureg ptr(const void *p)
{
    return (ureg)(uptr)p;
}

/* Every number from both rings with both instructions, except the DTrace calls at CPL 0
 * when they are served (check_probe_create and check_probe do those with real arguments).
 * Runs before any probe exists: a ring-3 PROBE_CREATE that were served would take id 1. */
static void check_rows(void)
{
    static const ureg numbers[] = {
        HYPERCALL_PROTOTYPE, HYPERCALL_DTRACE_PROBE_CREATE, HYPERCALL_DTRACE_PROBE, 3, 4, 5, 6,
        HYPERCALL_INDEX_MAX, 8, 0x100, (ureg)-1,
    };
    memcpy(name_buf, "ring3", 5);
    for (unsigned cpl = 0; cpl <= 3; cpl += 3)
        for (int insn = VMCALL; insn <= VMMCALL; insn++)
            for (unsigned i = 0; i < ARRAY_SIZE(numbers); i++) {
                ureg nr = numbers[i];
                ureg a0 = 0, a1 = 0, a2 = 0;
                if (nr == HYPERCALL_DTRACE_PROBE_CREATE) {
                    a0 = ptr(name_buf);
                    a1 = 5;
                } else if (nr == HYPERCALL_DTRACE_PROBE) {
                    a0 = 1;
                    a1 = ptr(probe_args);
                    a2 = 7;
                }
                if (cpl == 0 && nr >= HYPERCALL_DTRACE_PROBE_CREATE &&
                    nr <= HYPERCALL_DTRACE_PROBE && model(0, insn, nr) == H_SERVE)
                    continue;
                char what[48];
                gsnprintf(what, sizeof what, "number 0x%lx", (unsigned long)nr);
                struct answer a = call(cpl, insn, nr, a0, a1, a2, HYPERCALL_RET_SUCCESS, what);
                if (nr == HYPERCALL_DTRACE_PROBE_CREATE && a.vec == 0 &&
                    model(cpl, insn, nr) == H_WRONG_RING)
                    check(a.rdi == ptr(name_buf), "refused PROBE_CREATE leaves RDI alone");
            }
#if RT_64BIT
    /* 64-bit callers: all of RAX is the number, nothing is truncated. */
    for (int insn = VMCALL; insn <= VMMCALL; insn++)
        call(0, insn, 0xffffffff00000000ull | HYPERCALL_PROTOTYPE, 0, 0, 0, 0,
             "64-bit RAX=0xffffffff00000000 (not PROTOTYPE)");
#endif
}

/* Calls at CPL 3 with an instruction this host does not trap: print what happened. */
static void show_untrapped(void)
{
    for (int insn = VMCALL; insn <= VMMCALL; insn++) {
        if (cpl3_trapped[insn])
            continue;
        struct answer a = hc3(insn, HYPERCALL_PROTOTYPE, 0, 0, 0);
        char got[64];
        describe(&a, got, sizeof got);
        gprintf("%s: host: %s at CPL 3 -> %s (not trapped on this host: not the VMM's answer)\n",
                GUEST_NAME, insn_name[insn], got);
    }
}

/* ------------------------------------------------------------ DTrace */

static ureg probes_created; /* the highest id handed out */

/* Highest end of guest RAM from the memory map, 0 if unknown. */
static u64 ram_end(const struct hvm_start_info *si)
{
    return rt_ram_end(si);
}

/* PROBE_CREATE of `len` bytes at `p` at CPL 0; `want` is the id it must hand out, or 0 if it
 * must answer ERROR (and leave RDI alone). Silent unless the check fails (`what` NULL) so the
 * limit loop does not print 4096 lines. Returns the id handed out (0 if none). */
static ureg create(enum insn insn, ureg p, ureg len, ureg want, const char *what)
{
    enum host_does h = model(0, insn, HYPERCALL_DTRACE_PROBE_CREATE);
    if (h != H_SERVE) {
        struct answer a = hc0(insn, HYPERCALL_DTRACE_PROBE_CREATE, p, len, 0);
        judge(h, a, 0, insn, HYPERCALL_DTRACE_PROBE_CREATE, 0, what ? what : "PROBE_CREATE");
        return 0;
    }
    struct answer a = hc0(insn, HYPERCALL_DTRACE_PROBE_CREATE, p, len, 0);
    bool ok;
    if (want)
        ok = a.vec == 0 && a.rax == HYPERCALL_RET_SUCCESS && a.rdi == want;
    else
        ok = a.vec == 0 && a.rax == HYPERCALL_RET_ERROR && a.rdi == p;
    count(h, HYPERCALL_DTRACE_PROBE_CREATE, a.vec == 0 ? a.rax : HYPERCALL_RET_SUCCESS);
    if (what || !ok) {
        char got[64];
        describe(&a, got, sizeof got);
        if (want)
            check(ok, "PROBE_CREATE %s, %s -> RAX=0, RDI=id %lu (got %s)",
                  what ? what : "(limit loop)", insn_name[insn], (unsigned long)want, got);
        else
            check(ok, "PROBE_CREATE %s, %s -> RAX=1, RDI unchanged (got %s)",
                  what ? what : "(limit loop)", insn_name[insn], got);
    }
    ureg id = a.vec == 0 && a.rax == HYPERCALL_RET_SUCCESS ? a.rdi : 0;
    if (id > probes_created)
        probes_created = id;
    return id;
}

static ureg create_name(enum insn insn, const char *name, ureg want, const char *what)
{
    size_t n = strlen(name);
    memcpy(name_buf, name, n);
    return create(insn, ptr(name_buf), n, want, what);
}

static void check_probe_create(const struct hvm_start_info *si)
{
    create_name(insn_at(0), name_one, 1, "\"guest:bhyve:main:one\" (ids start at 1)");
    create_name(insn_at(1), name_two, 2, "\"guest:bhyve:main:two\"");
    create_name(insn_at(1), name_one, 1, "of an existing name (the same probe)");
    if (model(0, insn_at(0), HYPERCALL_DTRACE_PROBE_CREATE) != H_SERVE)
        return; /* refused: one check per id above is enough */

    /* Bad names. */
    enum insn i = insn_at(0);
    memset(name_buf, 'a', sizeof name_buf);
    create(i, ptr(name_buf), 0, 0, "of zero length");
    create(i, ptr(name_buf), MAX_PROBE_NAME + 1, 0, "of 129 bytes (the bound is 128)");
    memcpy(name_buf, "bad\xff\xfe", 5);
    create(i, ptr(name_buf), 5, 0, "with invalid UTF-8");
    memcpy(name_buf, "nul\0inside", 10);
    create(i, ptr(name_buf), 10, 0, "with a NUL inside");
    memcpy(name_buf, "tab\there", 8);
    create(i, ptr(name_buf), 8, 0, "with a control character");
    create(i, 0, 4, 0, "at a NULL pointer");

    /* Bad pointers. */
    u64 end = ram_end(si);
    if (end && end <= 0xC0000000ull) {
        create(i, (ureg)end, 4, 0, "past the end of RAM");
        /* Two valid bytes at the very end of RAM, two beyond it. */
        volatile char *tail = (volatile char *)(uptr)(end - 2);
        tail[0] = 'o';
        tail[1] = 'k';
        create(i, (ureg)(end - 2), 4, 0, "straddling the end of RAM");
        create(i, (ureg)(end - 2), 2, 3, "of the last 2 bytes of RAM");
    } else {
        check(false, "end of RAM known and below 3 GiB (got 0x%llx)", (unsigned long long)end);
        create_name(i, "ok", 3, "\"ok\"");
    }
    create(i, (ureg)-2, 4, 0, "at an address that wraps");
#if RT_64BIT
    memcpy(name_buf, "high", 4);
    create(i, ptr(name_buf) | 0x100000000000ull, 4, 0,
           "with pointer bits above 32 set (no truncation)");
#endif
}

/* Probe events the host must have recorded, in order. */
struct event {
    ureg id;
    u64 thread;
    unsigned vcpu;
};
static struct event events[8];
static unsigned n_events;

static const char *probe_name(ureg id)
{
    return id == 1 ? name_one : id == 2 ? name_two : id == MAX_PROBES ? "limit:4096" : "?";
}

/* PROBE at CPL 0 on this vCPU; records the event when it must have fired. */
static void fire(enum insn insn, ureg id, ureg args, u64 thread, ureg served, const char *what)
{
    struct answer a = call(0, insn, HYPERCALL_DTRACE_PROBE, id, args, (ureg)thread, served, what);
    if (a.vec == 0 && a.rax == HYPERCALL_RET_SUCCESS && n_events < ARRAY_SIZE(events) &&
        model(0, insn, HYPERCALL_DTRACE_PROBE) == H_SERVE)
        events[n_events++] = (struct event){id, thread, 0};
}

/* vCPU 1 fires probe 2 (through the AP mailbox); the vector or RAX comes back. */
static ureg ap_fire(ureg insn)
{
    struct answer a = hc0((enum insn)insn, HYPERCALL_DTRACE_PROBE, 2, ptr(probe_args),
                          (ureg)THREAD_TWO);
    return a.vec ? 0x1000 + (ureg)a.vec : a.rax;
}

void guest_ap_main(unsigned vcpu)
{
    (void)vcpu;
    ap_mailbox_loop();
}

static void check_probe(unsigned vcpus)
{
    fire(insn_at(0), 1, ptr(probe_args), THREAD_ONE, HYPERCALL_RET_SUCCESS,
         "PROBE id 1, 5 args, thread 0x1001");
    fire(insn_at(1), 1, ptr(probe_args), THREAD_ONE, HYPERCALL_RET_SUCCESS,
         "PROBE id 1 again");
    if (vcpus >= 2) {
        unsigned got = wait_for_aps(1, 50000000);
        check(got == 1, "vCPU 1 is up (got %u APs)", got);
        enum insn insn = insn_at(0);
        enum host_does h = model(0, insn, HYPERCALL_DTRACE_PROBE);
        ureg res = 0;
        int rc = ap_call(1, ap_fire, insn, &res, 50000000);
        check(rc == 0, "ap_call to vCPU 1 (rc %d)", rc);
        struct answer a = {0, res, 0};
        if (res >= 0x1000) {
            a.vec = (int)(res - 0x1000);
            a.rax = 0;
        }
        if (judge(h, a, 0, insn, HYPERCALL_DTRACE_PROBE, HYPERCALL_RET_SUCCESS,
                  "PROBE id 2 from vCPU 1") &&
            h == H_SERVE)
            events[n_events++] = (struct event){2, THREAD_TWO, 1};
    } else {
        fire(insn_at(0), 2, ptr(probe_args), THREAD_TWO, HYPERCALL_RET_SUCCESS, "PROBE id 2");
    }
    enum insn i = insn_at(0);
    fire(i, 0, ptr(probe_args), 1, HYPERCALL_RET_ERROR, "PROBE id 0 (DTRACE_IDNONE)");
    fire(i, 999, ptr(probe_args), 1, HYPERCALL_RET_ERROR, "PROBE of an id never created");
    fire(i, 1, 0, 1, HYPERCALL_RET_ERROR, "PROBE with a NULL argument pointer");
    fire(i, 1, (ureg)-8, 1, HYPERCALL_RET_ERROR, "PROBE with an argument pointer that wraps");
    /* Written back after the calls: the host only reads them. */
    check(probe_args[0] == 10 && probe_args[3] == 0x8000000000000001ull && probe_args[4] == 50,
          "PROBE leaves the arguments in guest memory alone");
}

/* Fills the table up to MAX_PROBES: ~4093 calls, so names are built without gsnprintf (slow
 * on hosts where guest memory accesses are) and only failures print. */
static void check_limit(void)
{
    ureg first_bad = 0, last = 0;
    unsigned long long t0 = rdtsc();
    memcpy(name_buf, "limit:", 6);
    for (ureg want = probes_created + 1; want <= MAX_PROBES; want++) {
        ureg v = want;
        char digits[8];
        unsigned n = 0;
        do {
            digits[n++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        for (unsigned k = 0; k < n; k++)
            name_buf[6 + k] = digits[n - 1 - k];
        last = create(insn_at((unsigned)want), ptr(name_buf), 6 + n, want, NULL);
        if (last != want && !first_bad)
            first_bad = want;
    }
    unsigned long long cycles = rdtsc() - t0;
    gprintf("%s: limit loop: %llu Mcycles\n", GUEST_NAME,
            (unsigned long long)udiv64(cycles, 1000000, NULL));
    check(!first_bad, "PROBE_CREATE hands out every id up to 4096 in order (first wrong: %lu)",
          (unsigned long)first_bad);
    check(last == MAX_PROBES, "the last probe has id 4096 (got %lu)", (unsigned long)last);
    memcpy(name_buf, "one:too:many", 12);
    create(insn_at(0), ptr(name_buf), 12, 0, "of a 4097th probe");
    create_name(insn_at(1), name_two, 2, "of an existing name when the table is full");
    fire(insn_at(0), MAX_PROBES, ptr(probe_args), 9, HYPERCALL_RET_SUCCESS, "PROBE id 4096");
    fire(insn_at(0), MAX_PROBES + 1, ptr(probe_args), 9, HYPERCALL_RET_ERROR, "PROBE id 4097");
}

/* ------------------------------------------------------------ main */

static void parse_cmdline(void)
{
    char buf[16];
    if (cmdline_get("expect", buf, sizeof buf) >= 0) {
        unsigned i;
        for (i = 0; i < ARRAY_SIZE(scenario_name); i++)
            if (!strcmp(buf, scenario_name[i]))
                break;
        if (i == ARRAY_SIZE(scenario_name))
            panic("unknown expect=%s", buf);
        sc = (enum scenario)i;
    }
    static const char *const which[] = {"none", "vmcall", "vmmcall", "both"};
    const char *key[2] = {"insn", "cpl3"};
    bool *set[2] = {accepted, cpl3_trapped};
    for (unsigned k = 0; k < 2; k++) {
        if (cmdline_get(key[k], buf, sizeof buf) < 0)
            continue;
        unsigned w;
        for (w = 0; w < ARRAY_SIZE(which); w++)
            if (!strcmp(buf, which[w]))
                break;
        if (w == ARRAY_SIZE(which) || (k == 0 && w == 0))
            panic("unknown %s=%s", key[k], buf);
        set[k][VMCALL] = w & 1;
        set[k][VMMCALL] = (w >> 1) & 1;
    }
}

int guest_main(const struct hvm_start_info *si)
{
    parse_cmdline();
    bool limit = cmdline_get_u64("limit", 1) != 0;
    unsigned vcpus = (unsigned)cmdline_get_u64("vcpus", 1);
    gprintf("%s: bhyve personality checks (%s, %s callers), expect=%s, accepted:%s%s, "
            "trapped at CPL 3:%s%s\n",
            GUEST_NAME, rt_boot_protocol_name(), RT_64BIT ? "64-bit" : "32-bit",
            scenario_name[sc], accepted[VMCALL] ? " VMCALL" : "",
            accepted[VMMCALL] ? " VMMCALL" : "", cpl3_trapped[VMCALL] ? " VMCALL" : "",
            cpl3_trapped[VMMCALL] ? " VMMCALL" : "");

    check_cpuid();
    check_rows();
    show_untrapped();
    if (model(0, insn_at(0), HYPERCALL_DTRACE_PROBE_CREATE) != H_DISABLED) {
        check_probe_create(si);
        check_probe(vcpus);
        if (limit && model(0, insn_at(0), HYPERCALL_DTRACE_PROBE_CREATE) == H_SERVE)
            check_limit();
    }
    check(current_cpl() == 0, "back at CPL 0 after every call");

    /* What the host must have recorded. */
    gprintf("%s: expect host counters: hypercalls=%u disabled=%u unknown=%u\n", GUEST_NAME,
            tally.dispatched, tally.disabled, tally.unknown);
    for (unsigned r = 0; r < ROWS; r++)
        gprintf("%s: expect host row %u: calls=%u errors=%u denied=%u wrong_ring=%u\n",
                GUEST_NAME, r, tally.calls[r], tally.errors[r], tally.denied[r],
                tally.wrong_ring[r]);
    unsigned fired[3] = {0, 0, 0}; /* ids 1, 2, 4096 */
    for (unsigned e = 0; e < n_events; e++)
        fired[events[e].id == 1 ? 0 : events[e].id == 2 ? 1 : 2]++;
    unsigned n_fired = (fired[0] > 0) + (fired[1] > 0) + (fired[2] > 0);
    gprintf("%s: expect host report lines: %u\n", GUEST_NAME,
            probes_created ? 1 + n_fired : 0);
    if (probes_created) {
        gprintf("%s: expect host report: bhyve: %lu guest DTrace probes created, %u fired\n",
                GUEST_NAME, (unsigned long)probes_created, n_fired);
        static const ureg ids[3] = {1, 2, MAX_PROBES};
        for (unsigned k = 0; k < 3; k++)
            if (fired[k])
                gprintf("%s: expect host report: bhyve probe %lu \"%s\": fired %u times\n",
                        GUEST_NAME, (unsigned long)ids[k], probe_name(ids[k]), fired[k]);
    }
    for (unsigned e = 0; e < n_events; e++)
        gprintf("%s: expect probe event: id=%lu thread=0x%llx vcpu=%u name=\"%s\"\n",
                GUEST_NAME, (unsigned long)events[e].id, (unsigned long long)events[e].thread,
                events[e].vcpu, probe_name(events[e].id));

    return check_summary();
}
