/* misbehave: a guest that misbehaves on purpose, so the host can prove it ends such a guest
 * cleanly (vmm/tests/misbehave.rs, docs/reliability.md). One scenario per run:
 *
 *   do=triple     load an empty IDT and raise #UD: a triple fault
 *   do=spin       interrupts off, spin with `pause` forever: no exit of its own
 *   do=halt       interrupts off, `hlt` forever, on every vCPU (APs too)
 *   do=flood_e9   write to the debug console port 0xE9 forever
 *   do=flood_com1 write to COM1's transmitter (0x3F8) forever
 *   do=flood_xen  Xen's console_io(CONSOLEIO_write) of 4 KiB forever (Xen mode)
 *
 * Before misbehaving it prints "misbehave64: ok   started <scenario>"; an unknown scenario
 * prints a FAIL line and exits 2. */
#include "guest.h"

#define SAY(...) gprintf(GUEST_NAME ": " __VA_ARGS__)

/* xen/include/public/xen.h and xen/include/public/xen.h's CONSOLEIO_* */
#define HYPERVISOR_console_io 18
#define CONSOLEIO_write 0

static char scenario[16];

static void halt_forever(void)
{
    cli();
    for (;;)
        hlt();
}

void guest_ap_main(unsigned vcpu)
{
    char what[16];
    (void)vcpu;
    if (cmdline_get("do", what, sizeof what) >= 0 && !strcmp(what, "halt"))
        halt_forever();
    for (;;)
        sti_hlt();
}

static void triple(void)
{
    struct {
        u16 limit;
        uptr base;
    } __attribute__((packed)) empty = {0, 0};
    __asm__ volatile("lidt %0; ud2" ::"m"(empty));
}

static void spin(void)
{
    cli();
    for (;;)
        pause();
}

static void flood_port(u16 port)
{
    for (u32 i = 0;; i++)
        outb(port, (i % 64) == 63 ? '\n' : (u8)('a' + i % 26));
}

static char flood_buf[4096];

static void flood_xen(void)
{
    for (unsigned i = 0; i < sizeof flood_buf; i++)
        flood_buf[i] = (i % 64) == 63 ? '\n' : (char)('A' + i % 26);
    for (;;) {
        struct hc_regs r;
        memset(&r, 0, sizeof r);
#if RT_64BIT
        r.rax = HYPERVISOR_console_io;
        r.rdi = CONSOLEIO_write;
        r.rsi = sizeof flood_buf;
        r.rdx = (ureg)(uptr)flood_buf;
#else
        r.eax = HYPERVISOR_console_io;
        r.ebx = CONSOLEIO_write;
        r.ecx = sizeof flood_buf;
        r.edx = (ureg)(uptr)flood_buf;
#endif
        hypercall_vmcall(&r);
    }
}

int guest_main(const struct hvm_start_info *si)
{
    (void)si;
    if (cmdline_get("do", scenario, sizeof scenario) < 0)
        scenario[0] = 0;
    if (!strcmp(scenario, "triple") || !strcmp(scenario, "spin") ||
        !strcmp(scenario, "halt") || !strcmp(scenario, "flood_e9") ||
        !strcmp(scenario, "flood_com1") || !strcmp(scenario, "flood_xen")) {
        SAY("ok   started %s\n", scenario);
    } else {
        SAY("FAIL do=%s: got an unknown scenario want triple|spin|halt|flood_e9|flood_com1|"
            "flood_xen\n",
            scenario);
        return 2;
    }
    if (!strcmp(scenario, "triple"))
        triple();
    else if (!strcmp(scenario, "spin"))
        spin();
    else if (!strcmp(scenario, "halt"))
        halt_forever();
    else if (!strcmp(scenario, "flood_e9"))
        flood_port(0xe9);
    else if (!strcmp(scenario, "flood_com1"))
        flood_port(0x3f8);
    else
        flood_xen();
    SAY("FAIL %s: got a return want no end of its own\n", scenario);
    return 1;
}
