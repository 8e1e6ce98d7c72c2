//! The xen personality.

use std::sync::Arc;

use polyvisor_config::Config;
use polyvisor_core::{Dispatch, HypervisorMode};

use crate::{BuildError, HostFacts};

/// Builds the xen engine from a configuration.
pub fn build(_config: &Config, _host: &HostFacts) -> Result<Arc<dyn Dispatch>, BuildError> {
    Err(BuildError::NotImplemented(HypervisorMode::Xen))
}
