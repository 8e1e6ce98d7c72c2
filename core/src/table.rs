use bitflags::bitflags;

use crate::personality::{Call, Reply};

bitflags! {
    /// The protection rings a hypercall may be made from; declared on every table row.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Rings: u8 {
        /// Ring 0 (kernel).
        const RING0 = 1 << 0;
        /// Ring 1.
        const RING1 = 1 << 1;
        /// Ring 2.
        const RING2 = 1 << 2;
        /// Ring 3 (user).
        const RING3 = 1 << 3;
    }
}

impl Rings {
    /// Only the kernel.
    pub const KERNEL: Rings = Rings::RING0;
    /// Kernel and user.
    pub const KERNEL_AND_USER: Rings = Rings::RING0.union(Rings::RING3);

    /// Whether a caller at `cpl` may make the call.
    pub fn allows(self, cpl: u8) -> bool {
        cpl < 4 && self.bits() & (1 << cpl) != 0
    }

    /// The rings as text, e.g. "0,3".
    pub fn describe(self) -> String {
        (0u8..4).filter(|r| self.allows(*r)).map(|r| r.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// One hypercall of a personality: its number and name as the spec spells them, the rings it
/// may be called from, and the function that serves it (`None` for numbers the ABI reserves
/// but this implementation does not serve; the personality answers those as unimplemented).
pub struct HypercallRow<P: ?Sized> {
    /// The call number in the ABI's own numbering.
    pub number: u64,
    /// The spec's name for the call.
    pub name: &'static str,
    /// The rings the call may be made from.
    pub rings: Rings,
    /// The handler, or `None` when the number is reserved but not implemented.
    pub handler: Option<fn(&P, &mut Call<'_>) -> Reply>,
    /// One line for `polyvisor hypercalls`: what the call does here.
    pub summary: &'static str,
}

impl<P: ?Sized> std::fmt::Debug for HypercallRow<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HypercallRow")
            .field("number", &self.number)
            .field("name", &self.name)
            .field("rings", &self.rings)
            .field("implemented", &self.handler.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_checks() {
        assert!(Rings::KERNEL.allows(0));
        assert!(!Rings::KERNEL.allows(3));
        assert!(Rings::KERNEL_AND_USER.allows(3));
        assert!(!Rings::KERNEL_AND_USER.allows(1));
        assert!(!Rings::all().allows(4));
        assert_eq!(Rings::KERNEL_AND_USER.describe(), "0,3");
    }
}
