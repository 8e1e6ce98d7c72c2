use crate::cpuid::CpuidLeaf;
use crate::mode::HypervisorMode;
use crate::msr::{MsrContext, MsrRead, MsrWrite};
use crate::outcome::Outcome;
use crate::platform::Platform;
use crate::regs::Gpr;
use crate::regs::VcpuSnapshot;
use crate::table::HypercallRow;
use crate::trace::{describe_outcome, CallTrace};
use crate::GuestMemoryMmap;

/// A call as the personality's convention decoded it from the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallInput {
    /// The call number used for the table lookup.
    pub number: u64,
    /// Up to six arguments, already truncated to the caller's width.
    pub args: [u64; 6],
}

/// Everything a handler may touch: the decoded call, the trapping vCPU, guest memory and the
/// VMM's effects.
pub struct Call<'a> {
    /// The decoded call.
    pub input: CallInput,
    /// The vCPU that made it.
    pub vcpu: &'a VcpuSnapshot,
    /// Guest memory; every access is bounds-checked.
    pub memory: &'a GuestMemoryMmap,
    /// Effects the VMM provides.
    pub platform: &'a dyn Platform,
}

impl Call<'_> {
    /// Argument `i` (0-based); 0 past the convention's last argument.
    pub fn arg(&self, i: usize) -> u64 {
        self.input.args.get(i).copied().unwrap_or(0)
    }
}

/// What a handler returns; the personality's [`Personality::encode`] turns it into registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The call succeeded with this return value.
    Value(u64),
    /// The call failed with the ABI's error code, as it is placed in the result register
    /// (already negated where the ABI negates errors).
    Error(u64),
    /// Anything a value cannot express: an exception, a halt, a continuation, the VM's end.
    Outcome(Outcome),
}

/// Why the engine refused a call before reaching its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Hypercalls are disabled for this VM (the default).
    Disabled,
    /// No row of the table has this number.
    Unknown {
        /// The number the guest passed.
        number: u64,
    },
    /// The row exists but the ABI reserves it without an implementation here.
    Unimplemented {
        /// The number the guest passed.
        number: u64,
    },
    /// The configuration denies this call.
    Denied {
        /// The number the guest passed.
        number: u64,
    },
    /// The caller's ring may not make this call.
    WrongRing {
        /// The number the guest passed.
        number: u64,
        /// The caller's privilege level.
        cpl: u8,
    },
}

/// A hypervisor's face: identity, calling convention, hypercall table and synthetic MSRs.
///
/// A personality is data plus small functions. The [`Engine`](crate::Engine) owns the flow;
/// the personality only says how its ABI reads and writes registers and answers refusals.
pub trait Personality: Send + Sync + 'static {
    /// The mode this personality implements.
    fn mode(&self) -> HypervisorMode;

    /// The hypercall table, one row per call number, sorted by number.
    fn table(&self) -> &[HypercallRow<Self>];

    /// Reads the call number and arguments by the ABI's convention. An `Err` is the ABI's
    /// immediate answer for a malformed call (for example reserved bits set), which the engine
    /// returns as it is.
    fn decode(&self, vcpu: &VcpuSnapshot) -> Result<CallInput, Outcome>;

    /// Puts a handler's reply into registers by the ABI's convention.
    fn encode(&self, vcpu: &VcpuSnapshot, reply: Reply) -> Outcome;

    /// The ABI's answer to a call the engine refused.
    fn refuse(&self, vcpu: &VcpuSnapshot, refusal: Refusal) -> Outcome;

    /// Whether the engine should serve hypercalls at all before its global switch is consulted.
    /// Personalities whose identity can say "no hypercalls" (bhyve's stock FreeBSD 15 leaf)
    /// return `false` so every call is refused as disabled.
    fn hypercalls_possible(&self) -> bool {
        true
    }

    /// The CPUID leaves this personality shows vCPU `vcpu`, hypervisor range only.
    fn cpuid(&self, vcpu: u32) -> Vec<CpuidLeaf>;

    /// Human-readable meaning of a leaf this personality shows (signature, named feature
    /// bits), one line per fact, for `polyvisor cpuid`.
    fn explain_cpuid(&self, _leaf: &CpuidLeaf) -> Vec<String> {
        Vec::new()
    }

    /// Lines to print when the VM ends (what the personality collected, e.g. probe counts).
    fn report(&self) -> Vec<String> {
        Vec::new()
    }

    /// The synthetic MSR ranges this personality owns (inclusive); the VMM routes them here.
    fn msr_ranges(&self) -> &[(u32, u32)] {
        &[]
    }

    /// A read of a synthetic MSR.
    fn read_msr(&self, _ctx: &MsrContext<'_>, _msr: u32) -> MsrRead {
        MsrRead::NotMine
    }

    /// A write of a synthetic MSR.
    fn write_msr(&self, _ctx: &MsrContext<'_>, _msr: u32, _value: u64) -> MsrWrite {
        MsrWrite::NotMine
    }

    /// Describes the call in `vcpu`'s registers for a trace, in the ABI's own names: call
    /// name, sub-op, arguments by name. Called only while tracing, before the call runs, and
    /// also for calls the engine refuses (disabled, malformed), so it must read the registers
    /// itself rather than trust [`Personality::decode`]. Guest memory may be read to name
    /// what a pointer argument points at (through `platform` where the ABI passes linear
    /// addresses). The default names the row and shows the decoded arguments raw.
    fn trace_call(
        &self,
        vcpu: &VcpuSnapshot,
        _memory: &GuestMemoryMmap,
        _platform: &dyn Platform,
    ) -> CallTrace {
        match self.decode(vcpu) {
            Ok(input) => CallTrace::raw(self.table(), input.number, &input.args),
            Err(_) => CallTrace::raw(self.table(), vcpu.regs.get(Gpr::Rax), &[]),
        }
    }

    /// The result of a call as the ABI names it (`-ENOSYS`, `HV_STATUS_ACCESS_DENIED`,
    /// `#UD`), from the outcome the engine returned. The default shows RAX in hex.
    fn trace_result(&self, _vcpu: &VcpuSnapshot, outcome: &Outcome) -> String {
        describe_outcome(outcome, Gpr::Rax, |v| format!("{v:#x}"))
    }

    /// The spec's name of one of this personality's synthetic MSRs, for traces.
    fn msr_name(&self, _msr: u32) -> Option<&'static str> {
        None
    }

    /// vCPU `vcpu`'s halt (`HLT` or a call that answered [`Next::Halt`](crate::Next::Halt))
    /// has ended, however it ended (a wake, an interrupt, its `halt_until` bound, or at once
    /// for a wake remembered from before it), and the vCPU is about to run again. Called on
    /// that vCPU's own thread, with no VMM lock held, before the VMM forgets the wake it
    /// remembered for the halt: a personality that marks a vCPU "waiting" so an event will
    /// [`Platform::wake`](crate::Platform::wake) it clears the mark here, so a later event is
    /// not remembered as a wake that ends the next halt at once. A wake that raced with the
    /// end may still be remembered (a spurious wakeup), never lost. The default does nothing.
    fn halt_ended(&self, _vcpu: u32) {}
}
