//! Finds the line of a config path (`tools[2].params.pattern`) in the YAML text, so that
//! problems found after parsing can still point at a line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of every node, keyed by its path.
#[derive(Debug, Default)]
pub struct Lines(HashMap<String, usize>);

impl Lines {
    /// Reads the node paths of `yaml`. Text that doesn't parse gives an empty map: the YAML
    /// deserializer reports that error with its own line.
    pub fn of(yaml: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(yaml);
        if parser.load(&mut walker, false).is_err() {
            return Self::default();
        }
        Self(walker.lines)
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.0.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Walker {
    /// The path of a node starting now, or `None` when the node is a mapping key.
    fn begin_node(&mut self, key_text: Option<&str>, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key {
                None => {
                    if let Some(text) = key_text {
                        let p = join(path, text);
                        self.lines.entry(p).or_insert(line);
                        *key = Some(text.to_owned());
                    }
                    None
                }
                Some(k) => Some(join(path, k)),
            },
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                self.lines.entry(p.clone()).or_insert(line);
                Some(p)
            }
        }
    }

    /// A value node ended: the parent moves on to its next key or item.
    fn end_node(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, ..) => {
                let is_value = self.begin_node(Some(&text), line).is_some();
                if is_value {
                    self.end_node();
                }
            }
            Event::Alias(_) => {
                let is_value = self.begin_node(None, line).is_some();
                if is_value {
                    self.end_node();
                }
            }
            Event::MappingStart(..) => {
                let path = self.begin_node(None, line).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.begin_node(None, line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.end_node();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_block_and_flow_nodes() {
        let yaml = "server:\n  listen: x\ntools:\n  - name: a\n    params:\n      p: {type: string, pattern: '('}\n  - name: b\n";
        let lines = Lines::of(yaml);
        assert_eq!(lines.line("server.listen"), Some(2));
        assert_eq!(lines.line("tools[0].name"), Some(4));
        assert_eq!(lines.line("tools[0].params.p.pattern"), Some(6));
        assert_eq!(lines.line("tools[1]"), Some(7));
        assert_eq!(lines.line("tools[1].command"), Some(7));
    }
}
