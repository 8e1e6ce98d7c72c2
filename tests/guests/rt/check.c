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

/* Counts a check and prints its line; the details follow "FAIL <what>: " on failure only. */
static bool report(bool ok, const char *what, const char *fmt, ...) __printf(3, 4);
static bool report(bool ok, const char *what, const char *fmt, ...)
{
    __atomic_add_fetch(ok ? &checks_passed : &checks_failed, 1, __ATOMIC_RELAXED);
    if (ok) {
        gprintf("%s: ok   %s\n", GUEST_NAME, what);
        return true;
    }
    char details[200];
    va_list ap;
    va_start(ap, fmt);
    gvsnprintf(details, sizeof details, fmt, ap);
    va_end(ap);
    gprintf("%s: FAIL %s: %s\n", GUEST_NAME, what, details);
    return false;
}

bool check_eq(const char *what, u64 got, u64 want)
{
    return report(got == want, what, "got 0x%llx want 0x%llx", got, want);
}

bool check_true(const char *what, bool ok, const char *got_fmt, ...)
{
    char got[160];
    va_list ap;
    va_start(ap, got_fmt);
    gvsnprintf(got, sizeof got, got_fmt, ap);
    va_end(ap);
    return report(ok, what, "got %s", got);
}

static const char *fault_name(int vector)
{
    return vector ? vector_name((unsigned)vector) : "no fault";
}

bool check_fault(const char *what, int got, int want)
{
    return report(got == want, what, "got %s want %s", fault_name(got), fault_name(want));
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
