//! Range-checked values: a failed check is a serde error, so the TOML parser attaches the
//! value's location to it.
use serde::de::Error;
use serde::{Deserialize, Deserializer};

fn bounded<'de, D: Deserializer<'de>>(
    d: D,
    key: &str,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    match u64::try_from(v) {
        Ok(u) if (min..=max).contains(&u) => {
            u32::try_from(u).map_err(|_| D::Error::custom("out of range"))
        }
        _ => Err(D::Error::custom(format!("{key} must be between {min} and {max}{unit}, not {v}"))),
    }
}

/// Guest RAM: at least 2 MiB (the VMM's low megabyte plus a kernel), at most 64 GiB.
pub(crate) fn memory_mib<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, "memory_mib", 2, 65536, " MiB")
}

/// vCPUs: 1 to 64.
pub(crate) fn vcpus<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, "vcpus", 1, 64, "")
}

/// Timeout: up to a day.
pub(crate) fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, "timeout_secs", 0, 86400, " seconds")
}

/// The console output limit: up to 4 GiB, in KiB.
pub(crate) fn console_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, "console_limit_kib", 0, 4 * 1024 * 1024, " KiB")
}

/// The largest command line accepted, in bytes (Linux's x86 COMMAND_LINE_SIZE).
pub const MAX_CMDLINE: usize = 2048;

/// A command line: bounded, no NUL bytes.
pub(crate) fn cmdline<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.len() >= MAX_CMDLINE {
        return Err(D::Error::custom(format!(
            "cmdline is {} bytes; at most {} fit",
            s.len(),
            MAX_CMDLINE - 1
        )));
    }
    if s.contains('\0') {
        return Err(D::Error::custom("cmdline must not contain NUL characters"));
    }
    Ok(s)
}

/// A path key whose presence means a file: it must name one and hold no NUL. `subject` names
/// the key in messages; `absent` says what leaving it out does.
pub(crate) fn file_path<'de, D: Deserializer<'de>>(
    d: D,
    subject: &str,
    absent: &str,
) -> Result<Option<std::path::PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(D::Error::custom(format!(
            "{subject} must name a file; leave the key out {absent}"
        )));
    }
    if s.contains('\0') {
        return Err(D::Error::custom(format!("{subject} must not contain NUL characters")));
    }
    Ok(Some(std::path::PathBuf::from(s)))
}
