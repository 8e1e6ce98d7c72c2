/* bhyve: checks polyvisor's bhyve personality from the inside (docs/abi/bhyve.md): CPUID,
 * every row of the hypercall table from ring 0 and ring 3, the refusals, both instructions,
 * the DTrace calls with good and bad pointers, and the 4096-probe limit. Build it as a 64-bit
 * image (the full register width) and as a 32-bit PVH image (32-bit callers: the same
 * registers at 32 bits, results truncated). One line per check; exit status 0 only if every
 * check passed, 1 otherwise.
 *
 * Cmdline:
 *   expect=enabled      (default) VMM config: [hypervisor] hypercalls_enabled = true
 *   expect=disabled     VMM config: hypercalls off (the default config)
 *   expect=freebsd15    VMM config: hypercalls_enabled = true, [bhyve] cpuid_leaf = "freebsd15"
 *   expect=deny_probe   VMM config: hypercalls_enabled = true,
 *                       [hypervisor] deny = ["HYPERCALL_DTRACE_PROBE"]
 *   limit=0             skip the 4096-probe limit check (it makes ~4100 hypercalls)
 *
 * After an `enabled` run the host's end-of-run report should hold the lines this guest prints
 * as "expect host report: ..." (the probe counts), and the probe log one event per PROBE that
 * answered SUCCESS.
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

enum insn { VMCALL = 0, VMMCALL = 1 };
static const char *const insn_name[2] = {"VMCALL", "VMMCALL"};

enum scenario { ENABLED, DISABLED, FREEBSD15, DENY_PROBE };

static unsigned passed, failed;

static void check(bool ok, const char *fmt, ...) __printf(2, 3);
static void check(bool ok, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    gvsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (ok)
        passed++;
    else
        failed++;
    gprintf("%s: [%s] %s\n", GUEST_NAME, ok ? "ok" : "FAIL", line);
}

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

static void expect_ud(struct answer a, const char *what, unsigned cpl, enum insn insn)
{
    char got[64];
    describe(&a, got, sizeof got);
    check(a.vec == VEC_UD, "%s, %s at CPL %u -> #UD (got %s)", what, insn_name[insn], cpl, got);
}

static void expect_rax(struct answer a, ureg rax, const char *what, unsigned cpl, enum insn insn)
{
    char got[64];
    describe(&a, got, sizeof got);
    check(a.vec == 0 && a.rax == rax, "%s, %s at CPL %u -> RAX=%lu, no fault (got %s)", what,
          insn_name[insn], cpl, (unsigned long)rax, got);
}

/* ------------------------------------------------------------------ CPUID */

static void check_cpuid(enum scenario sc)
{
    u32 r[4];
    cpuid(0x40000000, 0, r);
    check(r[0] == 0x40000001, "CPUID 0x40000000.EAX = 0x40000001 (got 0x%x)", r[0]);
    check(r[1] == 0x76796862 && r[2] == 0x68622065 && r[3] == 0x20657679,
          "CPUID 0x40000000 signature \"bhyve bhyve \" (got %08x %08x %08x)", r[1], r[2], r[3]);
    cpuid(0x40000001, 0, r);
    u32 want = sc == DISABLED ? 0 : 1; /* review: 1 = enabled; FreeBSD 15: EXT_DEST_ID = bit 0 */
    check(r[0] == want, "CPUID 0x40000001.EAX = %u (got 0x%x)", want, r[0]);
    check(r[1] == 0 && r[2] == 0 && r[3] == 0, "CPUID 0x40000001 EBX=ECX=EDX=0");
}

/* --------------------------------------------------------------- disabled */

static void check_all_refused(void)
{
    static const ureg numbers[] = {0, 1, 2, 3, 6, 7, 0x100};
    for (unsigned i = 0; i < ARRAY_SIZE(numbers); i++)
        for (unsigned cpl = 0; cpl <= 3; cpl += 3)
            for (int insn = VMCALL; insn <= VMMCALL; insn++) {
                char what[48];
                gsnprintf(what, sizeof what, "hypercalls off: number %lu",
                          (unsigned long)numbers[i]);
                expect_ud(hc_at(cpl, insn, numbers[i], 0, 0, 0), what, cpl, insn);
            }
}

/* ---------------------------------------------------------------- enabled */

static char name_buf[2 * MAX_PROBE_NAME + 16];
static const char name_one[] = "guest:bhyve:main:one";
static const char name_two[] = "guest:bhyve:main:two";
static u64 probe_args[5] = {10, 20, 30, 0x8000000000000001ull, 50};

static ureg ptr(const void *p)
{
    return (ureg)(uptr)p;
}

/* Highest end of guest RAM from the memory map, 0 if unknown. */
static u64 ram_end(const struct hvm_start_info *si)
{
    u64 end = 0;
    if (!si || si->version < 1 || !si->memmap_paddr)
        return 0;
    const struct hvm_memmap_table_entry *e =
        (const struct hvm_memmap_table_entry *)(uptr)si->memmap_paddr;
    for (u32 i = 0; i < si->memmap_entries; i++)
        if (e[i].type == 1 && e[i].addr + e[i].size > end)
            end = e[i].addr + e[i].size;
    return end;
}

static void check_prototype(void)
{
    for (unsigned cpl = 0; cpl <= 3; cpl += 3)
        for (int insn = VMCALL; insn <= VMMCALL; insn++)
            expect_rax(hc_at(cpl, insn, HYPERCALL_PROTOTYPE, 1, 2, 3), HYPERCALL_RET_SUCCESS,
                       "HYPERCALL_PROTOTYPE", cpl, insn);
#if RT_64BIT
    /* 64-bit callers: all of RAX is the number, nothing is truncated. */
    expect_ud(hc0(VMCALL, 0xffffffff00000000ull | HYPERCALL_PROTOTYPE, 0, 0, 0),
              "64-bit RAX=0xffffffff00000000 (not PROTOTYPE)", 0, VMCALL);
#endif
}

static void check_ring3_refusals(enum scenario sc)
{
    memcpy(name_buf, "ring3", 5);
    for (int insn = VMCALL; insn <= VMMCALL; insn++) {
        expect_rax(hc3(insn, HYPERCALL_DTRACE_PROBE_CREATE, ptr(name_buf), 5, 0),
                   HYPERCALL_RET_ERROR, "HYPERCALL_DTRACE_PROBE_CREATE (ring 0 only)", 3, insn);
        if (sc == DENY_PROBE) /* denial is checked before the ring */
            expect_ud(hc3(insn, HYPERCALL_DTRACE_PROBE, 1, ptr(probe_args), 7),
                      "HYPERCALL_DTRACE_PROBE denied by config", 3, insn);
        else
            expect_rax(hc3(insn, HYPERCALL_DTRACE_PROBE, 1, ptr(probe_args), 7),
                       HYPERCALL_RET_ERROR, "HYPERCALL_DTRACE_PROBE (ring 0 only)", 3, insn);
        for (ureg nr = HYPERCALL_DTRACE_RESERVED1; nr <= HYPERCALL_DTRACE_RESERVED4; nr++) {
            char what[48];
            gsnprintf(what, sizeof what, "HYPERCALL_DTRACE_RESERVED%lu (ring 0 only)",
                      (unsigned long)(nr - 2));
            expect_rax(hc3(insn, nr, 0, 0, 0), HYPERCALL_RET_ERROR, what, 3, insn);
        }
    }
}

static void check_unimplemented(void)
{
    static const ureg numbers[] = {3, 4, 5, 6, HYPERCALL_INDEX_MAX, 8, 0x100, (ureg)-1};
    for (unsigned i = 0; i < ARRAY_SIZE(numbers); i++)
        for (int insn = VMCALL; insn <= VMMCALL; insn++) {
            char what[48];
            gsnprintf(what, sizeof what, "number 0x%lx (reserved or >= INDEX_MAX)",
                      (unsigned long)numbers[i]);
            expect_ud(hc0(insn, numbers[i], 0, 0, 0), what, 0, insn);
        }
    for (unsigned cpl = 0; cpl <= 3; cpl += 3)
        expect_ud(hc_at(cpl, VMCALL, HYPERCALL_INDEX_MAX, 0, 0, 0), "HYPERCALL_INDEX_MAX", cpl,
                  VMCALL);
}

/* PROBE_CREATE of `len` bytes at `p`: the id on SUCCESS, 0 otherwise. */
static ureg create_at(enum insn insn, ureg p, ureg len, struct answer *out)
{
    struct answer a = hc0(insn, HYPERCALL_DTRACE_PROBE_CREATE, p, len, 0);
    if (out)
        *out = a;
    return a.vec == 0 && a.rax == HYPERCALL_RET_SUCCESS ? a.rdi : 0;
}

static void expect_created(const char *name, enum insn insn, ureg want_id)
{
    struct answer a;
    size_t n = strlen(name);
    memcpy(name_buf, name, n);
    ureg id = create_at(insn, ptr(name_buf), n, &a);
    char got[64];
    describe(&a, got, sizeof got);
    check(id == want_id, "PROBE_CREATE \"%s\", %s -> RAX=0, RDI=id %lu (got %s)", name,
          insn_name[insn], (unsigned long)want_id, got);
}

static void expect_create_error(const char *what, ureg p, ureg len)
{
    struct answer a;
    create_at(VMCALL, p, len, &a);
    char got[64];
    describe(&a, got, sizeof got);
    check(a.vec == 0 && a.rax == HYPERCALL_RET_ERROR, "PROBE_CREATE %s -> RAX=1 (got %s)", what,
          got);
}

static void check_probe_create(const struct hvm_start_info *si)
{
    expect_created(name_one, VMCALL, 1);
    expect_created(name_two, VMMCALL, 2);
    expect_created(name_one, VMMCALL, 1); /* the same name is the same probe */

    /* Bad names. */
    memset(name_buf, 'a', sizeof name_buf);
    expect_create_error("of zero length", ptr(name_buf), 0);
    expect_create_error("of 129 bytes (the bound is 128)", ptr(name_buf), MAX_PROBE_NAME + 1);
    memcpy(name_buf, "bad\xff\xfe", 5);
    expect_create_error("with invalid UTF-8", ptr(name_buf), 5);
    memcpy(name_buf, "nul\0inside", 10);
    expect_create_error("with a NUL inside", ptr(name_buf), 10);
    memcpy(name_buf, "tab\there", 8);
    expect_create_error("with a control character", ptr(name_buf), 8);
    expect_create_error("at a NULL pointer", 0, 4);

    /* Bad pointers. */
    u64 end = ram_end(si);
    if (end && end <= 0xC0000000ull) {
        expect_create_error("past the end of RAM", (ureg)end, 4);
        /* Two valid bytes at the very end of RAM, two beyond it. */
        volatile char *tail = (volatile char *)(uptr)(end - 2);
        tail[0] = 'o';
        tail[1] = 'k';
        expect_create_error("straddling the end of RAM", (ureg)(end - 2), 4);
        check(create_at(VMCALL, (ureg)(end - 2), 2, NULL) == 3,
              "PROBE_CREATE of the last 2 bytes of RAM -> id 3");
    } else {
        gprintf("%s: [skip] end of RAM unknown or above 3 GiB: no past-the-end checks\n",
                GUEST_NAME);
        memcpy(name_buf, "ok", 2);
        check(create_at(VMCALL, ptr(name_buf), 2, NULL) == 3, "PROBE_CREATE \"ok\" -> id 3");
    }
    expect_create_error("at an address that wraps", (ureg)-2, 4);
#if RT_64BIT
    memcpy(name_buf, "high", 4);
    expect_create_error("with pointer bits above 32 set (no truncation)",
                        ptr(name_buf) | 0x100000000000ull, 4);
#endif
}

static unsigned fired_one, fired_two;

static void check_probe(enum scenario sc)
{
    if (sc == DENY_PROBE) {
        for (int insn = VMCALL; insn <= VMMCALL; insn++)
            expect_ud(hc0(insn, HYPERCALL_DTRACE_PROBE, 1, ptr(probe_args), 7),
                      "HYPERCALL_DTRACE_PROBE denied by config", 0, insn);
        return;
    }
    struct answer a;
    for (int insn = VMCALL; insn <= VMMCALL; insn++) {
        a = hc0(insn, HYPERCALL_DTRACE_PROBE, 1, ptr(probe_args), 0x1001);
        expect_rax(a, HYPERCALL_RET_SUCCESS, "PROBE id 1 with 5 args and thread 0x1001", 0, insn);
        fired_one += a.vec == 0 && a.rax == HYPERCALL_RET_SUCCESS;
    }
    a = hc0(VMCALL, HYPERCALL_DTRACE_PROBE, 2, ptr(probe_args), 0x1002);
    expect_rax(a, HYPERCALL_RET_SUCCESS, "PROBE id 2", 0, VMCALL);
    fired_two += a.vec == 0 && a.rax == HYPERCALL_RET_SUCCESS;
    expect_rax(hc0(VMCALL, HYPERCALL_DTRACE_PROBE, 0, ptr(probe_args), 1), HYPERCALL_RET_ERROR,
               "PROBE id 0 (DTRACE_IDNONE)", 0, VMCALL);
    expect_rax(hc0(VMCALL, HYPERCALL_DTRACE_PROBE, 999, ptr(probe_args), 1), HYPERCALL_RET_ERROR,
               "PROBE of an id never created", 0, VMCALL);
    expect_rax(hc0(VMCALL, HYPERCALL_DTRACE_PROBE, 1, 0, 1), HYPERCALL_RET_ERROR,
               "PROBE with a NULL argument pointer", 0, VMCALL);
    expect_rax(hc0(VMCALL, HYPERCALL_DTRACE_PROBE, 1, (ureg)-8, 1), HYPERCALL_RET_ERROR,
               "PROBE with an argument pointer that wraps", 0, VMCALL);
}

static void check_limit(void)
{
    char name[32];
    /* Ids 1..3 exist; fill up to MAX_PROBES. */
    ureg last = 3, bad_at = 0;
    for (ureg want = 4; want <= MAX_PROBES; want++) {
        int n = gsnprintf(name, sizeof name, "limit:%lu", (unsigned long)want);
        memcpy(name_buf, name, (size_t)n);
        ureg id = create_at(want & 1 ? VMMCALL : VMCALL, ptr(name_buf), (ureg)n, NULL);
        if (id != want && !bad_at)
            bad_at = want;
        last = id;
    }
    check(!bad_at, "PROBE_CREATE ids 4..4096 in order (first wrong at %lu)",
          (unsigned long)bad_at);
    check(last == MAX_PROBES, "the 4096th probe has id 4096 (got %lu)", (unsigned long)last);
    expect_create_error("of a 4097th probe", ptr("one:too:many"), 12);
    memcpy(name_buf, name_two, sizeof name_two - 1);
    check(create_at(VMCALL, ptr(name_buf), sizeof name_two - 1, NULL) == 2,
          "an existing name still resolves when full");
    expect_rax(hc0(VMCALL, HYPERCALL_DTRACE_PROBE, MAX_PROBES, ptr(probe_args), 9),
               HYPERCALL_RET_SUCCESS, "PROBE id 4096", 0, VMCALL);
    expect_rax(hc0(VMCALL, HYPERCALL_DTRACE_PROBE, MAX_PROBES + 1, ptr(probe_args), 9),
               HYPERCALL_RET_ERROR, "PROBE id 4097", 0, VMCALL);
}

int guest_main(const struct hvm_start_info *si)
{
    char buf[16];
    enum scenario sc = ENABLED;
    if (cmdline_get("expect", buf, sizeof buf) >= 0) {
        if (!strcmp(buf, "disabled"))
            sc = DISABLED;
        else if (!strcmp(buf, "freebsd15"))
            sc = FREEBSD15;
        else if (!strcmp(buf, "deny_probe"))
            sc = DENY_PROBE;
        else if (strcmp(buf, "enabled"))
            panic("unknown expect=%s", buf);
    }
    gprintf("%s: bhyve personality checks (%s, %s callers), expect=%s\n", GUEST_NAME,
            rt_boot_protocol_name(), RT_64BIT ? "64-bit" : "32-bit",
            sc == ENABLED ? "enabled" : sc == DISABLED ? "disabled"
                                      : sc == FREEBSD15 ? "freebsd15" : "deny_probe");

    check_cpuid(sc);
    if (sc == DISABLED || sc == FREEBSD15) {
        check_all_refused();
    } else {
        check_prototype();
        check_ring3_refusals(sc);
        check_unimplemented();
        check_probe_create(si);
        check_probe(sc);
        if (sc == ENABLED && cmdline_get_u64("limit", 1))
            check_limit();
        check(current_cpl() == 0, "back at CPL 0 after every call");
        if (sc == ENABLED) {
            bool limit = cmdline_get_u64("limit", 1) != 0;
            gprintf("%s: expect host report: bhyve: %u guest DTrace probes created, %u fired\n",
                    GUEST_NAME, limit ? MAX_PROBES : 3, limit ? 3 : 2);
            gprintf("%s: expect host report: bhyve probe 1 \"%s\": fired %u times\n", GUEST_NAME,
                    name_one, fired_one);
            gprintf("%s: expect host report: bhyve probe 2 \"%s\": fired %u times\n", GUEST_NAME,
                    name_two, fired_two);
            if (limit)
                gprintf("%s: expect host report: bhyve probe 4096 \"limit:4096\": fired 1 times\n",
                        GUEST_NAME);
        }
    }

    gprintf("%s: %u passed, %u failed\n", GUEST_NAME, passed, failed);
    return failed ? 1 : 0;
}
