/* polyvisor test-guest runtime: one-line checks with a final count (README.md, "Checks").
 *
 * Every check prints one line, `<guest>: ok   <what>` or `<guest>: FAIL <what>: got X want Y`,
 * and check_summary() prints `<guest>: N ok, M failed` and returns the exit status (0 only
 * when nothing failed and at least one check ran). A host test asserts the status, no `FAIL`
 * line and a minimum number of `ok` lines, so a guest that silently skips cannot pass.
 */
#include "rt_internal.h"

#ifndef GUEST_NAME
#define GUEST_NAME "guest"
#endif

static volatile u32 checks_passed, checks_failed;

static void count(bool ok)
{
    __atomic_add_fetch(ok ? &checks_passed : &checks_failed, 1, __ATOMIC_RELAXED);
}

bool check_eq(const char *what, u64 got, u64 want)
{
    bool ok = got == want;
    count(ok);
    if (ok)
        gprintf("%s: ok   %s\n", GUEST_NAME, what);
    else
        gprintf("%s: FAIL %s: got 0x%llx want 0x%llx\n", GUEST_NAME, what, got, want);
    return ok;
}

bool check_true(const char *what, bool ok, const char *got_fmt, ...)
{
    char got[160];
    va_list ap;
    va_start(ap, got_fmt);
    gvsnprintf(got, sizeof got, got_fmt, ap);
    va_end(ap);
    count(ok);
    if (ok)
        gprintf("%s: ok   %s\n", GUEST_NAME, what);
    else
        gprintf("%s: FAIL %s: got %s\n", GUEST_NAME, what, got);
    return ok;
}

static const char *fault_name(int vector)
{
    return vector ? vector_name((unsigned)vector) : "no fault";
}

bool check_fault(const char *what, int got, int want)
{
    bool ok = got == want;
    count(ok);
    if (ok)
        gprintf("%s: ok   %s\n", GUEST_NAME, what);
    else
        gprintf("%s: FAIL %s: got %s want %s\n", GUEST_NAME, what, fault_name(got),
                fault_name(want));
    return ok;
}

u32 checks_failed_so_far(void)
{
    return checks_failed;
}

int check_summary(void)
{
    u32 ok = checks_passed, bad = checks_failed;
    gprintf("%s: %u ok, %u failed\n", GUEST_NAME, ok, bad);
    return (bad || !ok) ? 1 : 0;
}
