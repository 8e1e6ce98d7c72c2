//! Constants of the Hyper-V hypercall interface, named as Linux's `include/hyperv/hvgdk_mini.h`
//! names them (which follows the TLFS). Each group cites the TLFS page it comes from.

// ---------------------------------------------------------------------------------------------
// CPUID leaves (TLFS "Feature and Interface Discovery", hvgdk_mini.h HYPERV_CPUID_*).

/// Vendor and maximum leaf.
pub const HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS: u32 = 0x4000_0000;
/// Interface signature ("Hv#1").
pub const HYPERV_CPUID_INTERFACE: u32 = 0x4000_0001;
/// Build and version.
pub const HYPERV_CPUID_VERSION: u32 = 0x4000_0002;
/// Partition privilege mask (EAX/EBX) and feature bits (EDX).
pub const HYPERV_CPUID_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations.
pub const HYPERV_CPUID_ENLIGHTMENT_INFO: u32 = 0x4000_0004;
/// Implementation limits.
pub const HYPERV_CPUID_IMPLEMENT_LIMITS: u32 = 0x4000_0005;
/// Hardware features in use.
pub const HYPERV_CPUID_HARDWARE_FEATURES: u32 = 0x4000_0006;
/// "Hv#1" in EAX of leaf 0x40000001 (TLFS: 0x31237648).
pub const HV_INTERFACE_SIGNATURE: u32 = 0x3123_7648;

// ---------------------------------------------------------------------------------------------
// HV_PARTITION_PRIVILEGE_MASK (TLFS datatypes/hv_partition_privilege_mask, hvgdk_mini.h),
// as one u64: bits 31:0 are CPUID 0x40000003 EAX, bits 63:32 are EBX.

/// AccessVpRunTimeReg: HV_X64_MSR_VP_RUNTIME.
pub const HV_MSR_VP_RUNTIME_AVAILABLE: u64 = 1 << 0;
/// AccessPartitionReferenceCounter: HV_X64_MSR_TIME_REF_COUNT.
pub const HV_MSR_TIME_REF_COUNT_AVAILABLE: u64 = 1 << 1;
/// AccessSynicRegs.
pub const HV_MSR_SYNIC_AVAILABLE: u64 = 1 << 2;
/// AccessSyntheticTimerRegs.
pub const HV_MSR_SYNTIMER_AVAILABLE: u64 = 1 << 3;
/// AccessIntrCtrlRegs: EOI/ICR/TPR and VP_ASSIST_PAGE.
pub const HV_MSR_APIC_ACCESS_AVAILABLE: u64 = 1 << 4;
/// AccessHypercallMsrs: GUEST_OS_ID and HYPERCALL.
pub const HV_MSR_HYPERCALL_AVAILABLE: u64 = 1 << 5;
/// AccessVpIndex: HV_X64_MSR_VP_INDEX.
pub const HV_MSR_VP_INDEX_AVAILABLE: u64 = 1 << 6;
/// AccessResetReg: HV_X64_MSR_RESET.
pub const HV_MSR_RESET_AVAILABLE: u64 = 1 << 7;
/// AccessStatsReg.
pub const HV_MSR_STAT_PAGES_AVAILABLE: u64 = 1 << 8;
/// AccessPartitionReferenceTsc: HV_X64_MSR_REFERENCE_TSC.
pub const HV_MSR_REFERENCE_TSC_AVAILABLE: u64 = 1 << 9;
/// AccessGuestIdleReg.
pub const HV_MSR_GUEST_IDLE_AVAILABLE: u64 = 1 << 10;
/// AccessFrequencyRegs: HV_X64_MSR_TSC_FREQUENCY and HV_X64_MSR_APIC_FREQUENCY.
pub const HV_ACCESS_FREQUENCY_MSRS: u64 = 1 << 11;
/// AccessDebugRegs (the synthetic debugger MSRs).
pub const HV_ACCESS_DEBUG_REGS: u64 = 1 << 12;
/// AccessReenlightenmentControls.
pub const HV_ACCESS_REENLIGHTENMENT: u64 = 1 << 13;
/// AccessTscInvariantControls.
pub const HV_ACCESS_TSC_INVARIANT: u64 = 1 << 15;
/// PostMessages (EBX bit 4).
pub const HV_POST_MESSAGES: u64 = 1 << (32 + 4);
/// SignalEvents (EBX bit 5).
pub const HV_SIGNAL_EVENTS: u64 = 1 << (32 + 5);
/// Debugging (EBX bit 11): the debug-data hypercalls.
pub const HV_DEBUGGING: u64 = 1 << (32 + 11);
/// EnableExtendedHypercalls (EBX bit 20): call codes from 0x8001.
pub const HV_ENABLE_EXTENDED_HYPERCALLS: u64 = 1 << (32 + 20);

// ---------------------------------------------------------------------------------------------
// CPUID 0x40000003 EDX (TLFS "Hypervisor Feature Identification").

/// Guest debugging support is available.
pub const HV_X64_GUEST_DEBUGGING_AVAILABLE: u32 = 1 << 1;
/// Hypercall input via XMM registers.
pub const HV_X64_HYPERCALL_XMM_INPUT_AVAILABLE: u32 = 1 << 4;
/// Timer frequencies can be read (TSC/APIC frequency MSRs).
pub const HV_FEATURE_FREQUENCY_MSRS_AVAILABLE: u32 = 1 << 8;
/// Guest crash MSRs.
pub const HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE: u32 = 1 << 10;
/// Synthetic debugger MSRs.
pub const HV_FEATURE_DEBUG_MSRS_AVAILABLE: u32 = 1 << 11;
/// ExtendedGvaRangesForFlushVirtualAddressListAvailable.
pub const HV_FEATURE_EXT_GVA_RANGES_FLUSH: u32 = 1 << 14;
/// Hypercall output via XMM registers.
pub const HV_X64_HYPERCALL_XMM_OUTPUT_AVAILABLE: u32 = 1 << 15;
/// HypercallMsrLockAvailable: bit 1 of HV_X64_MSR_HYPERCALL works.
pub const HV_X64_HYPERCALL_MSR_LOCK_AVAILABLE: u32 = 1 << 18;
/// Direct synthetic timers.
pub const HV_STIMER_DIRECT_MODE_AVAILABLE: u32 = 1 << 19;

// ---------------------------------------------------------------------------------------------
// CPUID 0x40000004 EAX (TLFS "Implementation Recommendations").

/// Use the hypercall for remote TLB flushes rather than IPIs.
pub const HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED: u32 = 1 << 2;
/// Use relaxed timing: disable watchdogs that rely on timely interrupts.
pub const HV_X64_RELAXED_TIMING_RECOMMENDED: u32 = 1 << 5;
/// Use HvCallSendSyntheticClusterIpi.
pub const HV_X64_CLUSTER_IPI_RECOMMENDED: u32 = 1 << 10;
/// Use the Ex (HV_VP_SET) forms of the processor-mask hypercalls.
pub const HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED: u32 = 1 << 11;

// ---------------------------------------------------------------------------------------------
// Synthetic MSRs (TLFS hypercall-interface, timers, hvgdk_mini.h HV_X64_MSR_*).

/// Guest OS identity; partition-wide, starts 0.
pub const HV_X64_MSR_GUEST_OS_ID: u32 = 0x4000_0000;
/// Hypercall page: bit 0 enable, bit 1 locked, 11:2 RsvdP, 63:12 GPFN.
pub const HV_X64_MSR_HYPERCALL: u32 = 0x4000_0001;
/// The calling VP's index; read-only.
pub const HV_X64_MSR_VP_INDEX: u32 = 0x4000_0002;
/// Writing 1 resets the partition.
pub const HV_X64_MSR_RESET: u32 = 0x4000_0003;
/// The VP's run time in 100 ns units; read-only.
pub const HV_X64_MSR_VP_RUNTIME: u32 = 0x4000_0010;
/// Partition reference time in 100 ns units, 0 at partition start; read-only.
pub const HV_X64_MSR_TIME_REF_COUNT: u32 = 0x4000_0020;
/// Reference TSC page: bit 0 enable, 11:1 RsvdP, 63:12 GPFN.
pub const HV_X64_MSR_REFERENCE_TSC: u32 = 0x4000_0021;
/// TSC frequency in Hz; read-only.
pub const HV_X64_MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
/// Local APIC timer frequency in Hz; read-only.
pub const HV_X64_MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
/// Crash parameter 0 (P1..P4 follow).
pub const HV_X64_MSR_CRASH_P0: u32 = 0x4000_0100;
/// Crash parameter 4.
pub const HV_X64_MSR_CRASH_P4: u32 = 0x4000_0104;
/// Crash control; bit 63 CrashNotify.
pub const HV_X64_MSR_CRASH_CTL: u32 = 0x4000_0105;
/// CRASH_CTL bit 63: the crash parameters are valid, notify the host.
pub const HV_CRASH_CTL_CRASH_NOTIFY: u64 = 1 << 63;
/// The last synthetic MSR number of the Hv#1 range (HV_X64_MSR_TSC_INVARIANT_CONTROL).
pub const HV_X64_MSR_LAST: u32 = 0x4000_0118;

/// HV_X64_MSR_HYPERCALL bit 0.
pub const HV_X64_MSR_HYPERCALL_ENABLE: u64 = 1 << 0;
/// HV_X64_MSR_HYPERCALL bit 1.
pub const HV_X64_MSR_HYPERCALL_LOCKED: u64 = 1 << 1;
/// HV_X64_MSR_HYPERCALL bits 11:2 (RsvdP).
pub const HV_X64_MSR_HYPERCALL_RSVD: u64 = 0xffc;
/// HV_X64_MSR_REFERENCE_TSC bit 0.
pub const HV_X64_MSR_TSC_REFERENCE_ENABLE: u64 = 1 << 0;
/// HV_X64_MSR_REFERENCE_TSC bits 11:1 (RsvdP).
pub const HV_X64_MSR_TSC_REFERENCE_RSVD: u64 = 0xffe;

// ---------------------------------------------------------------------------------------------
// Hypercall codes (TLFS hypercalls/overview, hvgdk_mini.h HVCALL_*).

/// HvCallFlushVirtualAddressSpace (simple).
pub const HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE: u16 = 0x0002;
/// HvCallFlushVirtualAddressList (rep).
pub const HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST: u16 = 0x0003;
/// HvCallNotifyLongSpinWait (simple).
pub const HVCALL_NOTIFY_LONG_SPIN_WAIT: u16 = 0x0008;
/// HvCallSendSyntheticClusterIpi (simple).
pub const HVCALL_SEND_IPI: u16 = 0x000b;
/// HvCallFlushVirtualAddressSpaceEx (simple, variable header).
pub const HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX: u16 = 0x0013;
/// HvCallFlushVirtualAddressListEx (rep, variable header).
pub const HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX: u16 = 0x0014;
/// HvCallSendSyntheticClusterIpiEx (simple, variable header).
pub const HVCALL_SEND_IPI_EX: u16 = 0x0015;
/// HvCallPostMessage (simple).
pub const HVCALL_POST_MESSAGE: u16 = 0x005c;
/// HvCallSignalEvent (simple).
pub const HVCALL_SIGNAL_EVENT: u16 = 0x005d;
/// HvCallPostDebugData (simple).
pub const HVCALL_POST_DEBUG_DATA: u16 = 0x0069;
/// HvCallRetrieveDebugData (simple).
pub const HVCALL_RETRIEVE_DEBUG_DATA: u16 = 0x006a;
/// HvCallResetDebugSession (simple).
pub const HVCALL_RESET_DEBUG_SESSION: u16 = 0x006b;
/// HvExtCallQueryCapabilities (simple, extended).
pub const HV_EXT_CALL_QUERY_CAPABILITIES: u16 = 0x8001;

// ---------------------------------------------------------------------------------------------
// The hypercall input value (TLFS "Hypercall Inputs", hvgdk_mini.h HV_HYPERCALL_*).

/// Bits 15:0, the call code.
pub const HV_HYPERCALL_CODE_MASK: u64 = 0xffff;
/// Bit 16: register-based ("fast") calling convention.
pub const HV_HYPERCALL_FAST_BIT: u64 = 1 << 16;
/// Bits 26:17: variable header size in qwords.
pub const HV_HYPERCALL_VARHEAD_OFFSET: u32 = 17;
/// The variable header size field, in place.
pub const HV_HYPERCALL_VARHEAD_MASK: u64 = 0x3ff << HV_HYPERCALL_VARHEAD_OFFSET;
/// Bits 43:32: rep count.
pub const HV_HYPERCALL_REP_COMP_OFFSET: u32 = 32;
/// Bits 59:48: rep start index.
pub const HV_HYPERCALL_REP_START_OFFSET: u32 = 48;
/// The rep start index field, in place.
pub const HV_HYPERCALL_REP_START_MASK: u64 = 0xfff << HV_HYPERCALL_REP_START_OFFSET;
/// RsvdZ bits 31:27 (bit 31 is "nested" for nested hypervisors, reserved here as in KVM's
/// HV_HYPERCALL_RSVD0_MASK), 47:44 and 63:60.
pub const HV_HYPERCALL_RSVD_MASK: u64 = (0x1f << 27) | (0xf << 44) | (0xf << 60);

// ---------------------------------------------------------------------------------------------
// HV_STATUS (TLFS hypercall-interface "Hypercall Status Codes", hvgdk_mini.h).

/// The call succeeded.
pub const HV_STATUS_SUCCESS: u16 = 0;
/// The call code is not recognised.
pub const HV_STATUS_INVALID_HYPERCALL_CODE: u16 = 2;
/// Bad rep count/start index, a reserved input-value bit, or a header size not taken.
pub const HV_STATUS_INVALID_HYPERCALL_INPUT: u16 = 3;
/// A GPA not 8-byte aligned, a list that spans pages, or a GPA outside the GPA space.
pub const HV_STATUS_INVALID_ALIGNMENT: u16 = 4;
/// A parameter is invalid.
pub const HV_STATUS_INVALID_PARAMETER: u16 = 5;
/// The caller lacks the privilege.
pub const HV_STATUS_ACCESS_DENIED: u16 = 6;
/// The operation is denied.
pub const HV_STATUS_OPERATION_DENIED: u16 = 8;
/// No buffer space left (debug data pending).
pub const HV_STATUS_INSUFFICIENT_BUFFERS: u16 = 0x13;
/// No data is available (RetrieveDebugData; QEMU hyperv-proto.h).
pub const HV_STATUS_NO_DATA: u16 = 0x1b;

// ---------------------------------------------------------------------------------------------
// Call inputs.

/// HV_FLUSH_ALL_PROCESSORS (TLFS HvCallFlushVirtualAddressSpace).
pub const HV_FLUSH_ALL_PROCESSORS: u64 = 1 << 0;
/// HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES.
pub const HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES: u64 = 1 << 1;
/// HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY (invalid for the List forms).
pub const HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY: u64 = 1 << 2;
/// HV_FLUSH_USE_EXTENDED_RANGE_FORMAT (needs HV_FEATURE_EXT_GVA_RANGES_FLUSH).
pub const HV_FLUSH_USE_EXTENDED_RANGE_FORMAT: u64 = 1 << 3;
/// HV_GENERIC_SET_SPARSE_4K (TLFS datatypes/hv_vp_set, format 0).
pub const HV_GENERIC_SET_SPARSE_4K: u64 = 0;
/// HV_GENERIC_SET_ALL (format 1).
pub const HV_GENERIC_SET_ALL: u64 = 1;
/// Lowest vector SendSyntheticClusterIpi accepts (TLFS: ">= 0x10").
pub const HV_IPI_LOW_VECTOR: u32 = 0x10;
/// Highest vector (TLFS: "<= 0xFF").
pub const HV_IPI_HIGH_VECTOR: u32 = 0xff;
/// Hyper-V pages are 4 KiB.
pub const HV_HYP_PAGE_SIZE: u64 = 4096;
