//! # polyvisor-vmm — the KVM backend
//!
//! The only crate that talks to /dev/kvm: VM and vCPU setup, boot protocols, hypercall trap
//! strategies, devices, and the `polyvisor` command's subcommands.
#![deny(missing_docs)]
