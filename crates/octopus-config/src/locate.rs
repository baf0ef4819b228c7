//! Maps field paths (`outbound.routes[1].split`) to source lines, so semantic errors
//! found after deserialisation still point at the line an operator must edit.
//! serde_yaml reports lines only for its own errors, hence this small event walk.

use saphyr_parser::{Event, Parser};
use std::collections::HashMap;

pub(crate) struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    /// `key` is the last key read; `None` while a key is expected.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

impl LineIndex {
    pub(crate) fn build(text: &str) -> Self {
        let mut lines = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        // Path of the node about to start, with the line it is best reported at
        // (the key's line for mapping values).
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let line = span.start.line();
            let is_start = matches!(
                event,
                Event::Scalar(..)
                    | Event::MappingStart(..)
                    | Event::SequenceStart(..)
                    | Event::Alias(_)
            );
            if is_start {
                // A scalar in key position of a mapping is a key, not a node.
                if let (Some(Frame::Map { path, key }), Event::Scalar(k, ..)) =
                    (stack.last_mut(), &event)
                {
                    if key.is_none() {
                        let child = join(path, k);
                        lines.entry(child).or_insert(line);
                        *key = Some(k.to_string());
                        continue;
                    }
                }
                let path = match stack.last_mut() {
                    None => String::new(),
                    Some(Frame::Map { path, key }) => {
                        join(path, key.take().as_deref().unwrap_or(""))
                    }
                    Some(Frame::Seq { path, next }) => {
                        *next += 1;
                        format!("{path}[{}]", *next - 1)
                    }
                };
                lines.entry(path.clone()).or_insert(line);
                match event {
                    Event::MappingStart(..) => stack.push(Frame::Map { path, key: None }),
                    Event::SequenceStart(..) => stack.push(Frame::Seq { path, next: 0 }),
                    _ => {}
                }
            } else if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
            }
        }
        LineIndex { lines }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_in_block_and_flow_style() {
        let text = "admin:\n  listen: 1.2.3.4:1\nroutes:\n  - name: a\n    split:\n      - { cluster: x, weight: 1 }\n      - cluster: y\n        weight: 0\n";
        let idx = LineIndex::build(text);
        assert_eq!(idx.line_of("admin.listen"), Some(2));
        assert_eq!(idx.line_of("routes[0]"), Some(4));
        assert_eq!(idx.line_of("routes[0].name"), Some(4));
        assert_eq!(idx.line_of("routes[0].split"), Some(5));
        assert_eq!(idx.line_of("routes[0].split[0].cluster"), Some(6));
        assert_eq!(idx.line_of("routes[0].split[1].weight"), Some(8));
        // Unknown leaf falls back to its nearest ancestor.
        assert_eq!(idx.line_of("routes[0].split[1].nope"), Some(7));
    }
}
