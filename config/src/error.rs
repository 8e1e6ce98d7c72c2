/// A configuration that cannot be used, with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// The text is not a valid configuration.
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        /// The file name (or "<string>").
        origin: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// What is wrong and, for choices, the valid ones.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn from_toml(origin: &str, text: &str, err: &toml::de::Error) -> Self {
        let offset = err.span().map(|s| s.start).unwrap_or(0);
        let (line, column) = line_column(text, offset);
        ConfigError::Invalid {
            origin: origin.to_string(),
            line,
            column,
            message: tidy(err.message()),
        }
    }

    /// `(line, column)` for invalid-config errors.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Invalid { line, column, .. } => Some((*line, *column)),
            ConfigError::Io { .. } => None,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

/// serde's messages say "variant" and "field"; a config's reader thinks in values and keys.
fn tidy(message: &str) -> String {
    message
        .trim()
        .replace("unknown variant", "unknown value")
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
}
