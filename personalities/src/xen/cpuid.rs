//! The Xen CPUID leaves, `cpuid_hypervisor_leaves` in `xen/arch/x86/cpuid.c` with the
//! layout of `xen/include/public/arch-x86/cpuid.h`, at base 0x40000000 (no Viridian leaves).

use polyvisor_core::CpuidLeaf;

use super::abi::cpuid::*;
use super::shared_info::time_scale;
use super::Xen;

const B: u32 = XEN_CPUID_FIRST_LEAF;

/// A leaf with sub-leaves selected by ECX.
fn sub(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidLeaf {
    CpuidLeaf { index, indexed: true, ..CpuidLeaf::new(function, eax, ebx, ecx, edx) }
}

/// The leaves vCPU `vcpu` sees.
pub fn leaves(xen: &Xen, vcpu: u32) -> Vec<CpuidLeaf> {
    let (major, minor) = xen.version;
    let khz = xen.host.tsc_khz.and_then(|k| u32::try_from(k).ok());
    let (mul, shift) =
        xen.host.tsc_khz.and_then(|k| time_scale(k.saturating_mul(1000))).unwrap_or((0, 0));
    let reliable = if xen.host.stable_tsc { XEN_CPUID_HOST_TSC_RELIABLE } else { 0 };
    vec![
        // B+0: the largest leaf (Xen's default limit) and "XenVMMXenVMM".
        CpuidLeaf::signature(B, B + XEN_CPUID_MAX_NUM_LEAVES, SIGNATURE),
        // B+1: version.
        CpuidLeaf::new(B + 1, (u32::from(major) << 16) | u32::from(minor), 0, 0, 0),
        // B+2: one hypercall page, its MSR; no feature bits for HVM.
        CpuidLeaf::new(B + 2, 1, HYPERCALL_PAGE_MSR, 0, 0),
        // B+3 sub-leaf 0: TSC not emulated, host TSC reliable when stable, RDTSCP bit not
        // claimed; mode "never emulate" (the guest reads the hardware TSC); guest kHz;
        // incarnation 0.
        sub(B + 3, 0, reliable, XEN_CPUID_TSC_MODE_NEVER_EMULATE, khz.unwrap_or(0), 0),
        // Sub-leaf 1: offset 0, the TSC-to-ns scale of the pvclock.
        sub(B + 3, 1, 0, 0, mul, i32::from(shift) as u32),
        // Sub-leaf 2: the physical TSC kHz (the guest's; never a host-only value).
        sub(B + 3, 2, khz.unwrap_or(0), 0, 0, 0),
        // B+4 sub-leaf 0: HVM features: the vCPU id in EBX, the domid in ECX.
        sub(
            B + 4,
            0,
            XEN_HVM_CPUID_VCPU_ID_PRESENT | XEN_HVM_CPUID_DOMID_PRESENT,
            vcpu,
            u32::from(xen.domid),
            0,
        ),
        // B+5: PV-only parameters, empty for HVM.
        sub(B + 5, 0, 0, 0, 0, 0),
    ]
}
