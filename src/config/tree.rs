//! The task file as a tree of YAML nodes that remember where they were written.
//!
//! `serde_yaml` parses the text (it reports syntax errors with a line and column and guards
//! against alias bombs and deep nesting), into our own [`Node`] rather than `serde_yaml::Value`
//! so that duplicate keys survive to be reported with everything else. `serde_yaml` does not
//! expose positions, so a second, event-level pass with `yaml-rust2` walks the same text and
//! lends each node its line and column. Where the two disagree on the shape (they should not),
//! nodes simply have no position and problems are reported by key path alone.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A line and column, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) pos: Option<Pos>,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    fn new(value: Value) -> Node {
        Node { value, pos: None }
    }

    /// The YAML type name used in "expected X, found Y" messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The scalar as text, for keys and for messages that quote a value.
    pub(crate) fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null => Some("null".into()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// A syntax error: the message and, when known, where.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub(crate) message: String,
    pub(crate) pos: Option<Pos>,
}

/// Parses YAML (or JSON) text into a positioned tree. An empty document is `Null`.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node::new(Value::Null));
    }
    let mut root = Node::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| {
        let pos = e.location().map(|l| Pos { line: l.line(), column: l.column() });
        // serde_yaml appends " at line L column C"; we print the position ourselves.
        let mut message = e.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        SyntaxError { message, pos }
    })?;
    let mut marks = MarkTree::default();
    if Parser::new_from_str(text).load(&mut marks, false).is_ok()
        && let Some(marked) = marks.root.take()
    {
        annotate(&mut root, &marked);
    }
    merge_keys(&mut root);
    Ok(root)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::new(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::new(Value::Null))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::new(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::new(Value::Int(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::new(Value::Int(v.into())))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::new(Value::Int(v)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        i128::try_from(v)
            .map(|v| Node::new(Value::Int(v)))
            .map_err(|_| E::custom("number is too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::new(Value::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::new(Value::Str(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::new(Value::Str(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::new(Value::Seq(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Node, Node>()? {
            entries.push((key, value));
        }
        Ok(Node::new(Value::Map(entries)))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Node, A::Error> {
        Err(de::Error::custom("YAML tags (`!name value`) are not supported in the task file"))
    }
}

/// The shape of the document with the marker of each node, from `yaml-rust2` events.
#[derive(Debug)]
enum Marked {
    Scalar(Marker),
    Alias(Marker),
    Seq(Marker, Vec<Marked>),
    Map(Marker, Vec<Marked>),
}

#[derive(Default)]
struct MarkTree {
    stack: Vec<Marked>,
    root: Option<Marked>,
}

impl MarkTree {
    fn push(&mut self, node: Marked) {
        match self.stack.last_mut() {
            Some(Marked::Seq(_, items) | Marked::Map(_, items)) => items.push(node),
            _ => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
        }
    }
}

impl MarkedEventReceiver for MarkTree {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(..) => self.push(Marked::Scalar(mark)),
            Event::Alias(_) => self.push(Marked::Alias(mark)),
            Event::SequenceStart(..) => self.stack.push(Marked::Seq(mark, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Marked::Map(mark, Vec::new())),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(done) = self.stack.pop() {
                    self.push(done);
                }
            }
            _ => {}
        }
    }
}

fn pos_of(mark: &Marker) -> Pos {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Pos { line: mark.line(), column: mark.col() + 1 }
}

/// Copies positions from the marked shape onto the tree, as far as the shapes agree.
fn annotate(node: &mut Node, marked: &Marked) {
    match (&mut node.value, marked) {
        (_, Marked::Scalar(m) | Marked::Alias(m)) => node.pos = Some(pos_of(m)),
        (Value::Seq(items), Marked::Seq(m, marks)) => {
            node.pos = Some(pos_of(m));
            if items.len() == marks.len() {
                for (item, mark) in items.iter_mut().zip(marks) {
                    annotate(item, mark);
                }
            }
        }
        (Value::Map(entries), Marked::Map(m, marks)) => {
            node.pos = Some(pos_of(m));
            if entries.len() * 2 == marks.len() {
                for ((key, value), pair) in entries.iter_mut().zip(marks.chunks(2)) {
                    annotate(key, &pair[0]);
                    annotate(value, &pair[1]);
                }
            }
        }
        (_, Marked::Seq(m, _) | Marked::Map(m, _)) => node.pos = Some(pos_of(m)),
    }
}

/// Applies YAML merge keys (`<<: *defaults`), which `serde_yaml` leaves to the caller: the
/// mapping's own keys win, then the merged mappings' keys in order.
fn merge_keys(node: &mut Node) {
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(merge_keys),
        Value::Map(entries) => {
            for (_, value) in entries.iter_mut() {
                merge_keys(value);
            }
            let is_merge = |key: &Node| matches!(&key.value, Value::Str(s) if s == "<<");
            if !entries.iter().any(|(k, _)| is_merge(k)) {
                return;
            }
            let (merges, mut own): (Vec<_>, Vec<_>) =
                std::mem::take(entries).into_iter().partition(|(k, _)| is_merge(k));
            for (merge_key, merged) in merges {
                let sources = match merged.value {
                    Value::Seq(items) => items,
                    other => vec![Node { value: other, pos: merged.pos }],
                };
                for source in sources {
                    match source.value {
                        Value::Map(extra) => {
                            for (k, v) in extra {
                                let exists = own.iter().any(|(ok, _)| {
                                    ok.scalar_text().is_some()
                                        && ok.scalar_text() == k.scalar_text()
                                });
                                if !exists {
                                    own.push((k, v));
                                }
                            }
                        }
                        // Not a mapping: keep the `<<` entry so the checker reports it.
                        other => {
                            own.push((merge_key.clone(), Node { value: other, pos: source.pos }));
                        }
                    }
                }
            }
            *entries = own;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_get<'a>(node: &'a Node, key: &str) -> &'a Node {
        let Value::Map(entries) = &node.value else { panic!("not a map") };
        &entries.iter().find(|(k, _)| k.scalar_text().as_deref() == Some(key)).unwrap().1
    }

    #[test]
    fn positions_point_at_values_and_keys() {
        let text = "a: 1\nb:\n  c: [x, y]\n  d: \"z\"\n";
        let root = parse(text).unwrap();
        assert_eq!(map_get(&root, "a").pos, Some(Pos { line: 1, column: 4 }));
        let b = map_get(&root, "b");
        assert_eq!(map_get(b, "d").pos, Some(Pos { line: 4, column: 6 }));
        let Value::Seq(items) = &map_get(b, "c").value else { panic!() };
        assert_eq!(items[1].pos, Some(Pos { line: 3, column: 10 }));
        let Value::Map(entries) = &b.value else { panic!() };
        assert_eq!(entries[1].0.pos, Some(Pos { line: 4, column: 3 }));
    }

    #[test]
    fn duplicates_are_kept_for_the_checker() {
        let root = parse("a: 1\na: 2\n").unwrap();
        let Value::Map(entries) = &root.value else { panic!() };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0.pos, Some(Pos { line: 2, column: 1 }));
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.is_some(), "{err:?}");
        assert!(!err.message.contains(" at line "), "{}", err.message);
    }

    #[test]
    fn json_parses_the_same() {
        let root = parse("{\"a\": {\"b\": [1, \"two\"]}}").unwrap();
        let Value::Seq(items) = &map_get(map_get(&root, "a"), "b").value else { panic!() };
        assert!(matches!(items[1].value, Value::Str(ref s) if s == "two"));
    }

    #[test]
    fn merge_keys_fill_in_missing_entries() {
        let root = parse("base: &b {x: 1, y: 2}\nt:\n  <<: *b\n  y: 3\n").unwrap();
        let t = map_get(&root, "t");
        assert!(matches!(map_get(t, "x").value, Value::Int(1)));
        assert!(matches!(map_get(t, "y").value, Value::Int(3)));
    }

    #[test]
    fn hostile_documents_error_instead_of_exploding() {
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
        assert!(parse(bomb).is_err());
        assert!(parse("!tag x").is_err());
    }
}
