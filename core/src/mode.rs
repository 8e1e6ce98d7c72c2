use serde::{Deserialize, Serialize};
use strum::{Display, EnumIter, EnumString, IntoStaticStr, VariantNames};

/// Which hypervisor the guest is shown: the hypervisor-mode tunable.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Display,
    EnumString,
    EnumIter,
    IntoStaticStr,
    VariantNames,
    Serialize,
    Deserialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum HypervisorMode {
    /// bhyve with the hypercall interface of the FreeBSD review.
    Bhyve,
    /// Linux KVM's paravirtual ABI.
    Kvm,
    /// Microsoft Hyper-V, as the TLFS describes it.
    Hyperv,
    /// Xen HVM/PVH.
    Xen,
}
