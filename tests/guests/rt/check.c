/* polyvisor test-guest runtime: one-line checks with a final count (README.md, "Checks").
 *
 * Every check prints one line, `<guest>: ok   <what>` or `<guest>: FAIL <what>: got X want Y`,
 * as one console write (or through the guest's check_set_output() writer), and check_summary()
 * prints `<guest>: N ok, M failed` and returns the exit status (0 only
 * when nothing failed and at least one check ran). A host test asserts the status, no `FAIL`
 * line and a minimum number of `ok` lines, so a guest that silently skips cannot pass.
 */
#include "rt_internal.h"

#ifndef GUEST_NAME
#define GUEST_NAME "guest"
#endif

static volatile u32 checks_passed, checks_failed;
static check_output_fn check_output;

void check_set_output(check_output_fn write)
{
    check_output = write;
}

/* Counts a check and prints its line as one write; `details` (may be NULL) follows
   "FAIL <what>: " on failure only. */
static bool emit(bool ok, const char *what, const char *details)
{
    __atomic_add_fetch(ok ? &checks_passed : &checks_failed, 1, __ATOMIC_RELAXED);
    char line[560];
    int n;
    if (ok)
        n = gsnprintf(line, sizeof line, "%s: ok   %s\n", GUEST_NAME, what);
    else if (details && *details)
        n = gsnprintf(line, sizeof line, "%s: FAIL %s: %s\n", GUEST_NAME, what, details);
    else
        n = gsnprintf(line, sizeof line, "%s: FAIL %s\n", GUEST_NAME, what);
    if (n > (int)sizeof line - 1) { /* cut, but still one line */
        n = (int)sizeof line - 1;
        line[n - 1] = '\n';
    }
    if (!check_output || !check_output(line, (size_t)n))
        console_write(line, (size_t)n);
    return ok;
}

static bool report(bool ok, const char *what, const char *fmt, ...) __printf(3, 4);
static bool report(bool ok, const char *what, const char *fmt, ...)
{
    char details[200];
    va_list ap;
    va_start(ap, fmt);
    gvsnprintf(details, sizeof details, fmt, ap);
    va_end(ap);
    return emit(ok, what, details);
}

bool check(bool ok, const char *fmt, ...)
{
    char text[320];
    va_list ap;
    va_start(ap, fmt);
    gvsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    char *details = NULL;
    for (char *c = text; *c; c++) {
        if (*c == '|') {
            *c = 0;
            details = c + 1;
            break;
        }
    }
    return emit(ok, text, details);
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

u32 checks_passed_so_far(void)
{
    return checks_passed;
}

static int summary(const char *tail)
{
    u32 ok = checks_passed, bad = checks_failed;
    gprintf("%s: %u ok, %u failed%s\n", GUEST_NAME, ok, bad, tail);
    return (bad || !ok) ? 1 : 0;
}

int check_summary(void)
{
    return summary("");
}

int check_summary_with(const char *fmt, ...)
{
    char tail[160];
    va_list ap;
    va_start(ap, fmt);
    gvsnprintf(tail, sizeof tail, fmt, ap);
    va_end(ap);
    return summary(tail);
}
