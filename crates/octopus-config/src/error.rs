use std::fmt;

/// One problem in a control file, located by field path (`routes[0].split`) and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path in the style `routes[1].match.host`; empty when the whole file is meant.
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    pub(crate) fn from_yaml(e: &serde_yaml::Error) -> Self {
        // serde_yaml renders "<path>: <message> at line L column C"; the location is kept
        // in structured form, so drop it from the text.
        let text = e.to_string();
        let message = match text.rfind(" at line ") {
            Some(i) if e.location().is_some() => text[..i].to_string(),
            _ => text,
        };
        ConfigError {
            path: String::new(),
            line: e.location().map(|l| l.line()),
            column: e.location().map(|l| l.column()),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l} column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file. Syntax and type errors stop parsing at the first;
/// semantic checks report all of them at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub(crate) fn single(origin: &str, e: ConfigError) -> Self {
        ConfigErrors {
            origin: origin.to_string(),
            errors: vec![e],
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {} error{}",
            self.origin,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {}: {}", self.origin, e)?;
        }
        Ok(())
    }
}
