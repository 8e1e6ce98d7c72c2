//! The attribute map `KVM_HC_MAP_GPA_RANGE` maintains: which guest-physical ranges the guest
//! declared, with which attributes (`Documentation/virt/kvm/x86/hypercalls.rst`, section 8).
//!
//! Ranges are half-open, never overlap, and adjacent ranges with equal attributes are merged,
//! so the map stays as small as the guest's declarations allow. It is bounded: an update that
//! would need more than the configured number of ranges is refused whole.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use super::abi;

/// The `attrs` argument of `KVM_HC_MAP_GPA_RANGE`, validated: bits 3:0 the preferred page
/// size (`KVM_MAP_GPA_RANGE_PAGE_SZ_*`), bit 4 encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GpaAttributes(u64);

impl GpaAttributes {
    /// Validates raw attributes: reserved bits 63:5 clear, a page size of 4K, 2M or 1G.
    pub fn from_raw(raw: u64) -> Option<Self> {
        let attrs = GpaAttributes(raw);
        (raw & abi::KVM_MAP_GPA_RANGE_RESERVED == 0 && attrs.page_size().is_some()).then_some(attrs)
    }

    /// The raw value as the guest passed it.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether the range is encrypted (`KVM_MAP_GPA_RANGE_ENCRYPTED`).
    pub const fn encrypted(self) -> bool {
        self.0 & abi::KVM_MAP_GPA_RANGE_ENCRYPTED != 0
    }

    /// The preferred page size in bytes, `None` for an encoding KVM does not define.
    pub const fn page_size(self) -> Option<u64> {
        match self.0 & abi::KVM_MAP_GPA_RANGE_PAGE_SZ_MASK {
            abi::KVM_MAP_GPA_RANGE_PAGE_SZ_4K => Some(4 << 10),
            abi::KVM_MAP_GPA_RANGE_PAGE_SZ_2M => Some(2 << 20),
            abi::KVM_MAP_GPA_RANGE_PAGE_SZ_1G => Some(1 << 30),
            _ => None,
        }
    }
}

impl fmt::Display for GpaAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = match self.page_size() {
            Some(s) if s >= 1 << 30 => "1G",
            Some(s) if s >= 2 << 20 => "2M",
            _ => "4K",
        };
        let enc = if self.encrypted() { "encrypted" } else { "plaintext" };
        write!(f, "{enc}, {size} pages")
    }
}

/// One range of the map: `[start, end)` with its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The attributes the guest declared.
    pub attrs: GpaAttributes,
}

impl fmt::Display for GpaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#014x}-{:#014x} {}", self.start, self.end.saturating_sub(1), self.attrs)
    }
}

/// The update needs more ranges than the map may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapFull;

/// A bounded, non-overlapping interval map from guest-physical addresses to attributes.
#[derive(Debug)]
pub struct GpaMap {
    /// start -> (end, attrs).
    ranges: Mutex<BTreeMap<u64, (u64, GpaAttributes)>>,
    limit: usize,
}

impl GpaMap {
    /// An empty map that holds at most `limit` ranges.
    pub fn new(limit: usize) -> Self {
        GpaMap { ranges: Mutex::new(BTreeMap::new()), limit }
    }

    /// The most ranges the map holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Declares `[start, end)` to have `attrs`, replacing what overlapped it. `start < end`.
    pub fn set(&self, start: u64, end: u64, attrs: GpaAttributes) -> Result<(), MapFull> {
        if start >= end {
            return Ok(());
        }
        let Ok(mut map) = self.ranges.lock() else {
            return Err(MapFull);
        };
        let plan = Plan::new(&map, start, end, attrs);
        if plan.resulting_len > self.limit {
            return Err(MapFull);
        }
        for key in plan.remove {
            map.remove(&key);
        }
        if let Some((s, e, a)) = plan.left_rest {
            map.insert(s, (e, a));
        }
        if let Some((s, e, a)) = plan.right_rest {
            map.insert(s, (e, a));
        }
        map.insert(plan.start, (plan.end, attrs));
        Ok(())
    }

    /// The attributes declared for the page holding `gpa`, if any.
    pub fn get(&self, gpa: u64) -> Option<GpaAttributes> {
        let map = self.ranges.lock().ok()?;
        map.range(..=gpa).next_back().and_then(|(_, (end, attrs))| (gpa < *end).then_some(*attrs))
    }

    /// Every range, in address order.
    pub fn ranges(&self) -> Vec<GpaRange> {
        self.ranges
            .lock()
            .map(|map| {
                map.iter()
                    .map(|(start, (end, attrs))| GpaRange {
                        start: *start,
                        end: *end,
                        attrs: *attrs,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of ranges held.
    pub fn len(&self) -> usize {
        self.ranges.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no range has been declared.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one update does, worked out before anything changes so a refused update leaves the
/// map as it was.
struct Plan {
    /// Keys of ranges that overlap or merge into the new one.
    remove: Vec<u64>,
    /// What is left of a range cut by the new start, with other attributes.
    left_rest: Option<(u64, u64, GpaAttributes)>,
    /// What is left of a range cut by the new end, with other attributes.
    right_rest: Option<(u64, u64, GpaAttributes)>,
    /// The new range after merging with equal neighbours.
    start: u64,
    end: u64,
    resulting_len: usize,
}

impl Plan {
    fn new(
        map: &BTreeMap<u64, (u64, GpaAttributes)>,
        start: u64,
        end: u64,
        attrs: GpaAttributes,
    ) -> Self {
        let mut plan = Plan {
            remove: Vec::new(),
            left_rest: None,
            right_rest: None,
            start,
            end,
            resulting_len: 0,
        };
        // A range starting before `start` that reaches it (overlapping or adjacent).
        if let Some((&s, &(e, a))) = map.range(..start).next_back() {
            if e >= start {
                if a == attrs {
                    plan.start = s;
                    plan.end = plan.end.max(e);
                } else if e > start {
                    plan.left_rest = Some((s, start, a));
                    if e > end {
                        plan.right_rest = Some((end, e, a));
                    }
                }
                if a == attrs || e > start {
                    plan.remove.push(s);
                }
            }
        }
        // Ranges starting inside [start, end], the last one possibly adjacent or sticking out.
        for (&s, &(e, a)) in map.range(start..=end) {
            if s == end && a != attrs {
                break; // merely adjacent, different: untouched
            }
            plan.remove.push(s);
            if e > end {
                if a == attrs {
                    plan.end = plan.end.max(e);
                } else {
                    plan.right_rest = Some((end, e, a));
                }
            }
        }
        let added =
            1 + usize::from(plan.left_rest.is_some()) + usize::from(plan.right_rest.is_some());
        plan.resulting_len = map.len().saturating_sub(plan.remove.len()).saturating_add(added);
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ENC: GpaAttributes = GpaAttributes(abi::KVM_MAP_GPA_RANGE_ENCRYPTED);
    const PLAIN: GpaAttributes = GpaAttributes(0);

    fn spans(m: &GpaMap) -> Vec<(u64, u64, bool)> {
        m.ranges().iter().map(|r| (r.start, r.end, r.attrs.encrypted())).collect()
    }

    #[test]
    fn attribute_validation() {
        assert_eq!(GpaAttributes::from_raw(0), Some(PLAIN));
        assert_eq!(GpaAttributes::from_raw(0x10), Some(ENC));
        assert_eq!(GpaAttributes::from_raw(0x11).unwrap().page_size(), Some(2 << 20));
        assert_eq!(GpaAttributes::from_raw(0x2).unwrap().page_size(), Some(1 << 30));
        for bad in [3, 0xf, 0x20, 1 << 63, 0x30] {
            assert_eq!(GpaAttributes::from_raw(bad), None, "{bad:#x}");
        }
        assert_eq!(ENC.to_string(), "encrypted, 4K pages");
    }

    #[test]
    fn split_merge_and_query() {
        let m = GpaMap::new(16);
        m.set(0x0, 0x10000, ENC).unwrap();
        m.set(0x4000, 0x6000, PLAIN).unwrap();
        assert_eq!(
            spans(&m),
            vec![(0x0, 0x4000, true), (0x4000, 0x6000, false), (0x6000, 0x10000, true)]
        );
        assert_eq!(m.get(0x3fff), Some(ENC));
        assert_eq!(m.get(0x4000), Some(PLAIN));
        assert_eq!(m.get(0x10000), None);
        // Re-encrypting the hole merges everything back into one range.
        m.set(0x4000, 0x6000, ENC).unwrap();
        assert_eq!(spans(&m), vec![(0x0, 0x10000, true)]);
        // Adjacent equal ranges merge; adjacent different ones do not.
        m.set(0x10000, 0x11000, ENC).unwrap();
        m.set(0x11000, 0x12000, PLAIN).unwrap();
        assert_eq!(spans(&m), vec![(0x0, 0x11000, true), (0x11000, 0x12000, false)]);
        // A range covering several is replaced whole.
        m.set(0x0, 0x20000, PLAIN).unwrap();
        assert_eq!(spans(&m), vec![(0x0, 0x20000, false)]);
    }

    #[test]
    fn full_map_refuses_without_changing() {
        let m = GpaMap::new(3);
        m.set(0x0, 0x3000, ENC).unwrap();
        m.set(0x1000, 0x2000, PLAIN).unwrap();
        assert_eq!(m.len(), 3);
        let before = m.ranges();
        assert_eq!(m.set(0x5000, 0x6000, ENC), Err(MapFull), "a new range grows the map");
        assert_eq!(m.set(0x0, 0x800, PLAIN), Err(MapFull), "a split grows the map");
        assert_eq!(m.ranges(), before);
        // Extending an equal neighbour does not grow it.
        m.set(0x2800, 0x4000, ENC).unwrap();
        assert_eq!(m.len(), 3);
        // Updates that do not grow the map still work when it is full.
        m.set(0x1000, 0x2000, ENC).unwrap();
        assert_eq!(spans(&m), vec![(0x0, 0x4000, true)]);
    }

    proptest! {
        /// Against a page-by-page model: the map answers every page as the model does, never
        /// holds overlapping or mergeable neighbours, and never exceeds its bound.
        #[test]
        fn matches_a_page_model(ops in proptest::collection::vec((0u64..64, 1u64..16, 0u64..3), 1..40)) {
            let m = GpaMap::new(1000);
            let mut model: Vec<Option<u64>> = vec![None; 96];
            for (first, count, kind) in ops {
                let attrs = GpaAttributes([0, 0x10, 0x1][kind as usize]);
                m.set(first * 4096, (first + count) * 4096, attrs).unwrap();
                for page in first..first + count {
                    model[page as usize] = Some(attrs.raw());
                }
            }
            for (page, want) in model.iter().enumerate() {
                prop_assert_eq!(m.get(page as u64 * 4096 + 7).map(|a| a.raw()), *want);
            }
            let r = m.ranges();
            for w in r.windows(2) {
                prop_assert!(w[0].end <= w[1].start);
                prop_assert!(!(w[0].end == w[1].start && w[0].attrs == w[1].attrs));
            }
        }

        #[test]
        fn never_exceeds_its_bound(ops in proptest::collection::vec((0u64..64, 1u64..8, 0u64..2), 1..60)) {
            let m = GpaMap::new(5);
            for (first, count, kind) in ops {
                let attrs = GpaAttributes([0, 0x10][kind as usize]);
                let before = m.ranges();
                match m.set(first * 4096, (first + count) * 4096, attrs) {
                    Ok(()) => prop_assert!(m.len() <= 5),
                    Err(MapFull) => prop_assert_eq!(m.ranges(), before),
                }
            }
        }
    }
}
