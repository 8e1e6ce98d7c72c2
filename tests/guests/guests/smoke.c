/* smoke: minimal boot test, built for every boot flavour (smoke64, smoke_pvh32,
 * smoke_pvh64, smoke_rwx64). Prints a banner, the command line and CPUID 0x40000000,
 * then exits 0. */
#include "guest.h"

static void sig_text(const u32 regs[3], char out[13])
{
    memcpy(out, regs, 12);
    out[12] = 0;
    for (int i = 0; i < 12; i++)
        if (out[i] && (out[i] < 0x20 || out[i] > 0x7e))
            out[i] = '.';
}

int guest_main(const struct hvm_start_info *si)
{
    u32 r[4];
    char sig[13];

    gprintf("%s: polyvisor smoke guest (%s)\n", GUEST_NAME, rt_boot_protocol_name());
    gprintf("%s: start info at %p, version %u, cmdline \"%s\"\n", GUEST_NAME, (const void *)si,
            si ? si->version : 0, cmdline());
    cpuid(0x40000000, 0, r);
    sig_text(&r[1], sig);
    gprintf("%s: cpuid 0x40000000: eax=0x%08x ebx=0x%08x ecx=0x%08x edx=0x%08x \"%s\"\n",
            GUEST_NAME, r[0], r[1], r[2], r[3], sig);
    gprintf("%s: ok\n", GUEST_NAME);
    return 0;
}
