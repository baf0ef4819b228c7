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
        let mut message = match text.rfind(" at line ") {
            Some(i) if e.location().is_some() => text[..i].to_string(),
            _ => text,
        };
        message.push_str(&suggest_key(&message));
        ConfigError {
            path: String::new(),
            line: e.location().map(|l| l.line()),
            column: e.location().map(|l| l.column()),
            message,
        }
    }
}

/// `; did you mean `host`?` for serde's "unknown field `hots`, expected one of `host`,
/// ..." (and "unknown variant"), or nothing when no expected name is close.
fn suggest_key(message: &str) -> String {
    let Some(rest) = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|p| message.find(p).map(|i| &message[i + p.len()..]))
    else {
        return String::new();
    };
    let Some((name, expected)) = rest.split_once('`') else {
        return String::new();
    };
    // The expected names are the backquoted words after the unknown one.
    let candidates = expected.split('`').skip(1).step_by(2);
    did_you_mean(name, candidates)
}

/// `; did you mean `x`?` with the candidate closest to `name` by edit distance, when
/// it is close enough to be a typo (at most a third of the name's length, and 1 for
/// short names), else nothing.
pub(crate) fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// Edit distance with adjacent transpositions (optimal string alignment), case-
/// insensitive: `hots` is one edit from `host`, and a wrong case is a typo too.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().flat_map(char::to_lowercase).collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_names_only() {
        assert_eq!(edit_distance("hots", "host"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("payments-v1", "Payments-V1"), 0);
        let m = "outbound.routes[0].match: unknown field `hots`, expected one of `host`, `path_prefix`, `method`, `headers`";
        assert_eq!(suggest_key(m), "; did you mean `host`?");
        let m = "unknown field `clustr`, expected `cluster` or `split`";
        assert_eq!(suggest_key(m), "; did you mean `cluster`?");
        let m = "unknown field `zzzzzz`, expected one of `host`, `method`";
        assert_eq!(suggest_key(m), "");
        let m = "unknown variant `round_robbin`, expected one of `round_robin`, `least_connections`, `weighted`";
        assert_eq!(suggest_key(m), "; did you mean `round_robin`?");
        assert_eq!(suggest_key("invalid type: integer"), "");
        let names = ["payments-v1", "payments-v2", "catalog"];
        assert_eq!(
            did_you_mean("payment-v1", names.into_iter()),
            "; did you mean `payments-v1`?"
        );
        assert_eq!(did_you_mean("orders", names.into_iter()), "");
    }
}
