use serde::de::Error;
use serde::{Deserialize, Deserializer, Serialize};

/// `[xen]`: options of the Xen personality.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XenConfig {
    /// The Xen version shown, "MAJOR.MINOR" (CPUID base+1 and XENVER_version).
    #[serde(default = "default_version", deserialize_with = "version")]
    pub version: String,
    /// XENVER_extraversion, at most 15 characters.
    #[serde(default = "default_extra", deserialize_with = "extraversion")]
    pub extraversion: String,
    /// The domain id the guest is told it has (1 to 0x7fef).
    #[serde(default = "default_domid", deserialize_with = "domid")]
    pub domid: u16,
}

fn default_version() -> String {
    "4.17".to_string()
}
fn default_extra() -> String {
    ".0".to_string()
}
fn default_domid() -> u16 {
    1
}

impl XenConfig {
    /// `(major, minor)` of [`XenConfig::version`].
    pub fn version_numbers(&self) -> (u16, u16) {
        parse_version(&self.version).unwrap_or((4, 17))
    }
}

fn parse_version(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn version<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match parse_version(&s) {
        Some(_) => Ok(s),
        None => Err(D::Error::custom(format!(
            "version must be \"MAJOR.MINOR\" with numbers up to 65535, e.g. \"4.17\", not {s:?}"
        ))),
    }
}

fn extraversion<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.len() > 15 || !s.is_ascii() {
        return Err(D::Error::custom(format!(
            "extraversion must be at most 15 ASCII characters, not {s:?}"
        )));
    }
    Ok(s)
}

fn domid<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = i64::deserialize(d)?;
    match u16::try_from(v) {
        Ok(id) if (1..=0x7fef).contains(&id) => Ok(id),
        _ => Err(D::Error::custom(format!("domid must be between 1 and 32751 (0x7fef), not {v}"))),
    }
}

impl Default for XenConfig {
    fn default() -> Self {
        XenConfig {
            version: default_version(),
            extraversion: default_extra(),
            domid: default_domid(),
        }
    }
}
