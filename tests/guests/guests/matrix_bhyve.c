/* matrix_bhyve: the bhyve column of polyvisor's cross-personality matrix (docs/testing.md).
 * The answers are docs/abi/bhyve.md's: System V registers (RAX number, RDI RSI RDX RCX
 * arguments, RAX result), #UD for disabled, unknown and denied calls, HYPERCALL_RET_ERROR (1)
 * without a fault for a ring violation and for a bad pointer. Scenarios: see matrix.h; bhyve
 * has no console, yield, shutdown, time or wake call (those cells are not applicable).
 */
#include "matrix.h"

/* bhyve_hypercall.h (dstolfa/freebsd) */
#define HYPERCALL_PROTOTYPE 0
#define HYPERCALL_DTRACE_PROBE_CREATE 1
#define HYPERCALL_DTRACE_RESERVED1 3
#define HYPERCALL_RET_SUCCESS 0
#define HYPERCALL_RET_ERROR 1
#define UNKNOWN_NUMBER 0x7ff0

struct answer {
    int vec;
    ureg rax;
};

static void load(struct hc_regs *r, ureg nr, ureg a0, ureg a1)
{
    memset(r, 0, sizeof *r);
#if RT_64BIT
    r->rax = nr;
    r->rdi = a0;
    r->rsi = a1;
#else
    r->eax = nr;
    r->edi = a0;
    r->esi = a1;
#endif
}

static ureg result(const struct hc_regs *r)
{
#if RT_64BIT
    return r->rax;
#else
    return r->eax;
#endif
}

static struct answer call(ureg nr, ureg a0, ureg a1)
{
    struct hc_regs r;
    load(&r, nr, a0, a1);
    struct answer a = {mx_call(&r), 0};
    a.rax = a.vec ? 0 : result(&r);
    return a;
}

static void expect_ud(const char *what, struct answer a)
{
    check_fault(what, a.vec, VEC_UD);
}

static void expect_rax(const char *what, struct answer a, ureg want)
{
    if (a.vec)
        check_fault(what, a.vec, 0);
    else
        check_eq(what, a.rax, want);
}

static void identity(void)
{
    mx_check_signature(0x40000000, "bhyve bhyve ", 0x40000001);
}

static void bad_pointers(void)
{
    static const char name[] = "matrix:bad:pointer:probe";
    u64 end = mx_ram_end();
    check_true("RAM end known", end != 0, "no memory map");
    expect_rax("PROBE_CREATE with a NULL name -> HYPERCALL_RET_ERROR",
               call(HYPERCALL_DTRACE_PROBE_CREATE, 0, 8), HYPERCALL_RET_ERROR);
    expect_rax("PROBE_CREATE with a name straddling the end of RAM -> HYPERCALL_RET_ERROR",
               call(HYPERCALL_DTRACE_PROBE_CREATE, (ureg)(end - 4), 8), HYPERCALL_RET_ERROR);
    expect_rax("PROBE_CREATE with a name beyond RAM -> HYPERCALL_RET_ERROR",
               call(HYPERCALL_DTRACE_PROBE_CREATE, (ureg)(end + 0x1000), 8),
               HYPERCALL_RET_ERROR);
    /* The host is unharmed: a good call still works. */
    expect_rax("PROBE_CREATE with a good name afterwards -> HYPERCALL_RET_SUCCESS",
               call(HYPERCALL_DTRACE_PROBE_CREATE, (ureg)(uptr)name, sizeof name - 1),
               HYPERCALL_RET_SUCCESS);
}

int guest_main(const struct hvm_start_info *si)
{
    (void)si;
    mx_init();
    if (mx_is("identity")) {
        identity();
        u32 r[4];
        cpuid(0x40000001, 0, r);
        check_eq("CPUID 0x40000001 EAX: hypercalls disabled by default", r[0], 0);
    } else if (mx_is("disabled")) {
        expect_ud("HYPERCALL_PROTOTYPE while disabled -> #UD", call(HYPERCALL_PROTOTYPE, 0, 0));
    } else if (mx_is("enabled")) {
        u32 r[4];
        cpuid(0x40000001, 0, r);
        check_eq("CPUID 0x40000001 EAX: hypercalls enabled", r[0], 1);
        expect_rax("HYPERCALL_PROTOTYPE -> HYPERCALL_RET_SUCCESS",
                   call(HYPERCALL_PROTOTYPE, 0, 0), HYPERCALL_RET_SUCCESS);
    } else if (mx_is("unknown")) {
        expect_ud("an unknown number -> #UD", call(UNKNOWN_NUMBER, 0, 0));
    } else if (mx_is("ring")) {
        struct hc_regs r;
        load(&r, HYPERCALL_DTRACE_RESERVED1, 0, 0);
        int vec = mx_call_ring3(&r);
        struct answer a = {vec, vec ? 0 : result(&r)};
        expect_rax("a ring-0 call from CPL 3 -> HYPERCALL_RET_ERROR, no fault", a,
                   HYPERCALL_RET_ERROR);
    } else if (mx_is("denied")) {
        expect_ud("HYPERCALL_PROTOTYPE denied by the config -> #UD",
                  call(HYPERCALL_PROTOTYPE, 0, 0));
    } else if (mx_is("bad-pointer")) {
        bad_pointers();
    } else if (mx_is("caller32")) {
        check_eq("a 32-bit caller", RT_64BIT, 0);
        identity();
        expect_rax("HYPERCALL_PROTOTYPE -> HYPERCALL_RET_SUCCESS",
                   call(HYPERCALL_PROTOTYPE, 0, 0), HYPERCALL_RET_SUCCESS);
        expect_ud("an unknown number -> #UD", call(UNKNOWN_NUMBER, 0, 0));
        bad_pointers();
    } else {
        return mx_unknown_scenario();
    }
    return check_summary();
}
