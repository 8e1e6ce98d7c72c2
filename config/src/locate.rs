//! Finds where a value stands in TOML text, for errors found after parsing.
use toml::de::{DeTable, DeValue};

use crate::error::line_column;

/// `(line, column)` of the value at `keys` (and array element `index`), or of the nearest
/// enclosing key that exists.
pub(crate) fn locate(text: &str, keys: &[&str], index: Option<usize>) -> Option<(usize, usize)> {
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut best: Option<usize> = None;
    for (depth, key) in keys.iter().enumerate() {
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *key) else {
            break;
        };
        // Point at the key for tables, at the value for leaves.
        best = Some(k.span().start);
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            DeValue::Array(items) if depth + 1 == keys.len() => {
                let at = index
                    .and_then(|i| items.get(i))
                    .map_or(v.span().start, |item| item.span().start);
                best = Some(at);
            }
            _ if depth + 1 == keys.len() => best = Some(v.span().start),
            _ => break,
        }
    }
    best.map(|offset| line_column(text, offset))
}
