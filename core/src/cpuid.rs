/// One CPUID leaf as a guest will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuidLeaf {
    /// EAX input.
    pub function: u32,
    /// ECX input; only significant when `indexed` is set.
    pub index: u32,
    /// Whether the leaf has sub-leaves selected by ECX.
    pub indexed: bool,
    /// Output EAX.
    pub eax: u32,
    /// Output EBX.
    pub ebx: u32,
    /// Output ECX.
    pub ecx: u32,
    /// Output EDX.
    pub edx: u32,
}

impl CpuidLeaf {
    /// A leaf without sub-leaves.
    pub const fn new(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> Self {
        CpuidLeaf { function, index: 0, indexed: false, eax, ebx, ecx, edx }
    }

    /// A hypervisor signature leaf: max leaf in EAX, twelve signature bytes in EBX, ECX, EDX.
    pub fn signature(function: u32, max_leaf: u32, signature: &[u8; 12]) -> Self {
        let word = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(signature.get(i * 4..i * 4 + 4).unwrap_or(&[0; 4]));
            u32::from_le_bytes(b)
        };
        CpuidLeaf::new(function, max_leaf, word(0), word(1), word(2))
    }

    /// The twelve signature bytes carried in EBX, ECX, EDX.
    pub fn signature_bytes(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        for (chunk, word) in out.chunks_exact_mut(4).zip([self.ebx, self.ecx, self.edx]) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

/// The range a guest scans for hypervisor signatures: 0x40000000..=0x4000FF00 in 0x100 steps.
pub const SIGNATURE_SCAN: (u32, u32, u32) = (0x4000_0000, 0x4000_ff00, 0x100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trip() {
        let leaf = CpuidLeaf::signature(0x4000_0000, 0x4000_0001, b"bhyve bhyve ");
        assert_eq!((leaf.ebx, leaf.ecx, leaf.edx), (0x7679_6862, 0x6862_2065, 0x2065_7679));
        assert_eq!(&leaf.signature_bytes(), b"bhyve bhyve ");
    }
}
