/* polyvisor test-guest runtime: console, printf, strings, command line. */
#include "rt_internal.h"

/* ------------------------------------------------------------- strings */
void *memcpy(void *d, const void *s, size_t n)
{
    void *ret = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return ret;
}

void *memmove(void *d, const void *s, size_t n)
{
    u8 *dp = d;
    const u8 *sp = s;
    if (dp <= sp || dp >= sp + n)
        return memcpy(d, s, n);
    while (n--)
        ((volatile u8 *)dp)[n] = sp[n];
    return d;
}

void *memset(void *d, int c, size_t n)
{
    void *ret = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return ret;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return (int)(u8)*a - (int)(u8)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (int)(u8)*a - (int)(u8)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

u64 udiv64(u64 n, u64 d, u64 *rem)
{
#if RT_64BIT
    if (rem)
        *rem = n % d;
    return n / d;
#else
    /* shift-subtract long division: no __udivdi3 needed */
    u64 q = 0, r = 0;
    for (int i = 63; i >= 0; i--) {
        r = (r << 1) | ((n >> i) & 1);
        if (r >= d) {
            r -= d;
            q |= 1ULL << i;
        }
    }
    if (rem)
        *rem = r;
    return q;
#endif
}

bool parse_u64(const char *s, u64 *out)
{
    u64 v = 0;
    unsigned base = 10;
    if (!s || !*s)
        return false;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
        if (!*s)
            return false;
    }
    for (; *s; s++) {
        unsigned dgt;
        if (*s >= '0' && *s <= '9')
            dgt = (unsigned)(*s - '0');
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            dgt = (unsigned)(*s - 'a' + 10);
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            dgt = (unsigned)(*s - 'A' + 10);
        else
            return false;
        v = (base == 16) ? (v << 4) | dgt : (v << 3) + (v << 1) + dgt;
    }
    *out = v;
    return true;
}

/* ------------------------------------------------------------- console */
#define CONSOLE_E9 1u
#define CONSOLE_COM1 2u
static volatile u32 console_mask = CONSOLE_E9;
static volatile u32 console_lock_owner; /* vCPU index + 1, 0 = free */
static u32 console_lock_depth;

void rt_console_init(void)
{
    char v[8];
    if (cmdline_get("console", v, sizeof v) >= 0) {
        if (!strcmp(v, "com1"))
            console_mask = CONSOLE_COM1;
        else if (!strcmp(v, "both"))
            console_mask = CONSOLE_E9 | CONSOLE_COM1;
        else
            console_mask = CONSOLE_E9;
    }
}

static void raw_putc(char c)
{
    u32 m = console_mask;
    if (m & CONSOLE_E9)
        outb(0xE9, (u8)c);
    if (m & CONSOLE_COM1)
        outb(0x3F8, (u8)c); /* THR; the VMM's UART needs no initialisation or polling */
}

/* Recursive per-vCPU lock so that a fault while printing can still print. */
static void console_lock(void)
{
    unsigned me = this_vcpu();
    u32 tag = (me < RT_MAX_VCPUS) ? me + 1 : RT_MAX_VCPUS + 1;
    if (__atomic_load_n(&console_lock_owner, __ATOMIC_ACQUIRE) == tag) {
        console_lock_depth++;
        return;
    }
    for (;;) {
        u32 expected = 0;
        if (__atomic_compare_exchange_n(&console_lock_owner, &expected, tag, false,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            break;
        pause();
    }
    console_lock_depth = 1;
}

static void console_unlock(void)
{
    if (--console_lock_depth == 0)
        __atomic_store_n(&console_lock_owner, 0, __ATOMIC_RELEASE);
}

void console_putc(char c)
{
    console_lock();
    raw_putc(c);
    console_unlock();
}

void console_write(const char *s, size_t n)
{
    console_lock();
    for (size_t i = 0; i < n; i++)
        raw_putc(s[i]);
    console_unlock();
}

void console_puts(const char *s)
{
    console_write(s, strlen(s));
}

/* -------------------------------------------------------------- printf */
struct outbuf {
    char *buf;
    size_t size; /* capacity including the NUL */
    size_t len;  /* characters that would have been written */
};

static void out_c(struct outbuf *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void out_pad(struct outbuf *o, char c, int n)
{
    while (n-- > 0)
        out_c(o, c);
}

int gvsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct outbuf o = {buf, size, 0};
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            out_c(&o, *fmt);
            continue;
        }
        fmt++;
        bool left = false, zero = false;
        for (;; fmt++) {
            if (*fmt == '-')
                left = true;
            else if (*fmt == '0')
                zero = true;
            else
                break;
        }
        int width = 0;
        if (*fmt == '*') {
            width = va_arg(ap, int);
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9')
                width = width * 10 + (*fmt++ - '0');
        }
        int lng = 0; /* 0 int, 1 long, 2 long long, 3 size_t */
        if (*fmt == 'l') {
            lng = 1;
            fmt++;
            if (*fmt == 'l') {
                lng = 2;
                fmt++;
            }
        } else if (*fmt == 'z') {
            lng = 3;
            fmt++;
        }
        char conv = *fmt;
        if (!conv)
            break;
        char tmp[24];
        int n = 0;
        const char *str = tmp;
        bool neg = false;
        u64 v = 0;
        unsigned base = 10;
        bool upper = false, prefix = false;
        switch (conv) {
        case 'c':
            tmp[0] = (char)va_arg(ap, int);
            n = 1;
            break;
        case 's':
            str = va_arg(ap, const char *);
            if (!str)
                str = "(null)";
            n = (int)strlen(str);
            break;
        case '%':
            tmp[0] = '%';
            n = 1;
            break;
        case 'd':
        case 'i': {
            s64 sv;
            if (lng == 2)
                sv = va_arg(ap, long long);
            else if (lng == 1 || lng == 3)
                sv = va_arg(ap, long);
            else
                sv = va_arg(ap, int);
            neg = sv < 0;
            v = neg ? (u64)0 - (u64)sv : (u64)sv;
            goto number;
        }
        case 'p':
            v = (uptr)va_arg(ap, void *);
            base = 16;
            prefix = true;
            goto number;
        case 'x':
        case 'X':
        case 'u':
            if (lng == 2)
                v = va_arg(ap, unsigned long long);
            else if (lng == 1 || lng == 3)
                v = va_arg(ap, unsigned long);
            else
                v = va_arg(ap, unsigned int);
            if (conv != 'u')
                base = 16;
            upper = conv == 'X';
        number : {
            char digits[24];
            int nd = 0;
            do {
                unsigned d;
                if (base == 16) {
                    d = (unsigned)(v & 15);
                    v >>= 4;
                } else {
                    u64 r;
                    v = udiv64(v, 10, &r);
                    d = (unsigned)r;
                }
                digits[nd++] = (char)(d < 10 ? '0' + d : (upper ? 'A' : 'a') + d - 10);
            } while (v);
            if (neg)
                tmp[n++] = '-';
            if (prefix) {
                tmp[n++] = '0';
                tmp[n++] = 'x';
            }
            /* zero padding goes between sign/prefix and digits */
            if (zero && !left) {
                while (n + nd < width && n < (int)sizeof(tmp) - nd)
                    tmp[n++] = '0';
            }
            while (nd)
                tmp[n++] = digits[--nd];
            break;
        }
        default:
            tmp[0] = '%';
            tmp[1] = conv;
            n = 2;
            break;
        }
        if (!left)
            out_pad(&o, ' ', width - n);
        for (int i = 0; i < n; i++)
            out_c(&o, str[i]);
        if (left)
            out_pad(&o, ' ', width - n);
    }
    if (o.size)
        o.buf[o.len < o.size ? o.len : o.size - 1] = 0;
    return (int)o.len;
}

int gsnprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = gvsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int gvprintf(const char *fmt, va_list ap)
{
    char buf[512];
    int n = gvsnprintf(buf, sizeof buf, fmt, ap);
    size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    console_write(buf, len);
    return n;
}

int gprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = gvprintf(fmt, ap);
    va_end(ap);
    return n;
}

/* ------------------------------------------------------------- cmdline */
const char *cmdline(void)
{
    const struct hvm_start_info *si = rt_start_info;
    if (!si || !si->cmdline_paddr)
        return "";
    return (const char *)(uptr)si->cmdline_paddr;
}

int cmdline_get(const char *key, char *buf, size_t len)
{
    const char *p = cmdline();
    size_t klen = strlen(key);
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        const char *w = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n')
            p++;
        size_t wlen = (size_t)(p - w);
        if (wlen < klen || strncmp(w, key, klen) != 0)
            continue;
        const char *val;
        size_t vlen;
        if (wlen == klen) {
            val = w + wlen;
            vlen = 0;
        } else if (w[klen] == '=') {
            val = w + klen + 1;
            vlen = wlen - klen - 1;
        } else {
            continue;
        }
        if (buf && len) {
            size_t c = vlen < len - 1 ? vlen : len - 1;
            memcpy(buf, val, c);
            buf[c] = 0;
        }
        return (int)vlen;
    }
    if (buf && len)
        buf[0] = 0;
    return -1;
}

bool cmdline_has(const char *key)
{
    return cmdline_get(key, NULL, 0) >= 0;
}

u64 cmdline_get_u64(const char *key, u64 dflt)
{
    char v[32];
    u64 out;
    if (cmdline_get(key, v, sizeof v) < 0 || !parse_u64(v, &out))
        return dflt;
    return out;
}

/* ------------------------------------------------------------- memory map */
u64 rt_ram_end(const struct hvm_start_info *si)
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
