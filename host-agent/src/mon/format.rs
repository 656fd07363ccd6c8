//! A `/monapi` answer as a tree of elements (the seed's XML: `response`, `appliance`, `entity`,
//! `counter`, each with attributes) and its three renderings. Pure functions, tested without
//! HTTP.
//!
//! - **XML** (the default): the seed's elements and attributes; every value escaped, so the
//!   answer is well-formed whatever a guest named its counters.
//! - **JSON**: the XML structure with elements as objects and attributes as their properties,
//!   as the seed describes it; an element's children are arrays under the child's tag:
//!   `{"response":{"timestamp":1194967464,"appliance":[{"name":"main.web","entity":[...]}]}}`.
//!   Numbers are JSON numbers, an empty attribute an empty string.
//! - **UDL**: AppLogic's UDL, as ccad.conf is written: an element is its tag, its `name` as a
//!   quoted string, and a block with its other attributes (`key = value`) and children; a leaf
//!   with only attributes takes the one-line form `counter "Sent bytes": value = 23234`.
//!
//! Strings a guest sent are shown as `appmon_wire::escape` shows them (control characters and
//! backslashes as `\n`, `\u{1b}`, `\\`, the same text in every format and in `appmonctl`), then
//! escaped for the format: XML entities, JSON string escapes, UDL's `\"` and `\\`.

use std::fmt::Write;

use appmon_wire::escape;

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Number(f64),
    /// Shown as `""`: a counter without a range, an alarm not set, a value not yet received.
    Empty,
}

/// One element of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub tag: &'static str,
    pub attrs: Vec<(&'static str, Value)>,
    pub children: Vec<Element>,
}

impl Element {
    pub fn new(tag: &'static str) -> Element {
        Element {
            tag,
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    pub fn attr(mut self, name: &'static str, value: Value) -> Element {
        self.attrs.push((name, value));
        self
    }

    pub fn text(self, name: &'static str, text: &str) -> Element {
        self.attr(name, Value::Text(text.to_owned()))
    }
}

/// A number as the seed writes one: integers without a fraction, others in Rust's shortest
/// round-trip form.
fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

// ---- XML ----

/// The element as an XML document.
pub fn xml(root: &Element) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml_element(&mut out, root, 0);
    out
}

fn xml_element(out: &mut String, e: &Element, depth: usize) {
    let pad = "   ".repeat(depth);
    out.push_str(&pad);
    out.push('<');
    out.push_str(e.tag);
    for (name, value) in &e.attrs {
        out.push(' ');
        out.push_str(name);
        out.push_str("=\"");
        match value {
            Value::Text(t) => xml_escape(out, &escape(t)),
            Value::Number(v) => out.push_str(&number(*v)),
            Value::Empty => {}
        }
        out.push('"');
    }
    if e.children.is_empty() {
        out.push_str(" />\n");
        return;
    }
    out.push_str(">\n");
    for child in &e.children {
        xml_element(out, child, depth + 1);
    }
    out.push_str(&pad);
    let _ = writeln!(out, "</{}>", e.tag);
}

/// Escapes for an attribute value. The text is already free of control characters (wire
/// escape), so what is left are XML's own five.
fn xml_escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

// ---- JSON ----

/// The element as a JSON document: `{"<root tag>": {...}}`, properties in the XML's order.
pub fn json(root: &Element) -> String {
    let mut out = String::from("{");
    json_string(&mut out, root.tag);
    out.push(':');
    json_element(&mut out, root);
    out.push('}');
    out
}

fn json_string(out: &mut String, text: &str) {
    // serde_json's string escaping; a `str` always serialises.
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into()));
}

fn json_element(out: &mut String, e: &Element) {
    out.push('{');
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
    };
    for (name, value) in &e.attrs {
        sep(out);
        json_string(out, name);
        out.push(':');
        match value {
            Value::Text(t) => json_string(out, &escape(t)),
            Value::Number(v) if v.is_finite() => out.push_str(&number(*v)),
            Value::Number(_) | Value::Empty => out.push_str("\"\""),
        }
    }
    // Children grouped by tag, each group an array, in the order the tags first appear.
    let mut tags: Vec<&str> = Vec::new();
    for child in &e.children {
        if !tags.contains(&child.tag) {
            tags.push(child.tag);
        }
    }
    for tag in tags {
        sep(out);
        json_string(out, tag);
        out.push_str(":[");
        for (i, child) in e.children.iter().filter(|c| c.tag == tag).enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_element(out, child);
        }
        out.push(']');
    }
    out.push('}');
}

// ---- UDL ----

/// The element in UDL.
pub fn udl(root: &Element) -> String {
    let mut out = String::new();
    udl_element(&mut out, root, 0);
    out
}

fn udl_value(out: &mut String, value: &Value) {
    match value {
        Value::Text(t) => udl_string(out, &escape(t)),
        Value::Number(v) => out.push_str(&number(*v)),
        Value::Empty => out.push_str("\"\""),
    }
}

fn udl_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn udl_element(out: &mut String, e: &Element, depth: usize) {
    let pad = "   ".repeat(depth);
    out.push_str(&pad);
    out.push_str(e.tag);
    let name = e.attrs.iter().find(|(n, _)| *n == "name");
    if let Some((_, value)) = name {
        out.push(' ');
        udl_value(out, value);
    }
    let attrs: Vec<&(&str, Value)> = e.attrs.iter().filter(|(n, _)| *n != "name").collect();
    if e.children.is_empty() {
        if !attrs.is_empty() {
            out.push(':');
            for (i, (n, v)) in attrs.iter().enumerate() {
                out.push_str(if i == 0 { " " } else { ", " });
                out.push_str(n);
                out.push_str(" = ");
                udl_value(out, v);
            }
        }
        out.push('\n');
        return;
    }
    out.push('\n');
    let inner = "   ".repeat(depth + 1);
    let _ = writeln!(out, "{inner}{{");
    for (n, v) in attrs {
        out.push_str(&inner);
        out.push_str(n);
        out.push_str(" = ");
        udl_value(out, v);
        out.push('\n');
    }
    for child in &e.children {
        udl_element(out, child, depth + 1);
    }
    let _ = writeln!(out, "{inner}}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's `/monapi/val/main.web` example.
    fn seed_values() -> Element {
        let counter = |name: &str, v: f64| {
            Element::new("counter")
                .text("name", name)
                .attr("value", Value::Number(v))
        };
        let mut entity = Element::new("entity").text("name", "Terminal in");
        entity.children = vec![
            counter("Sent bytes", 23234.0),
            counter("Received bytes", 690432.0),
        ];
        let mut app = Element::new("appliance").text("name", "main.web");
        app.children = vec![entity];
        let mut root = Element::new("response").attr("timestamp", Value::Number(1194967464.0));
        root.children = vec![app];
        root
    }

    #[test]
    fn xml_is_the_seeds_structure() {
        let text = xml(&seed_values());

        assert_eq!(
            text,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <response timestamp=\"1194967464\">\n\
             \x20  <appliance name=\"main.web\">\n\
             \x20     <entity name=\"Terminal in\">\n\
             \x20        <counter name=\"Sent bytes\" value=\"23234\" />\n\
             \x20        <counter name=\"Received bytes\" value=\"690432\" />\n\
             \x20     </entity>\n\
             \x20  </appliance>\n\
             </response>\n"
        );
    }

    #[test]
    fn json_follows_the_xml_structure() {
        let text = json(&seed_values());

        assert_eq!(
            text,
            r#"{"response":{"timestamp":1194967464,"appliance":[{"name":"main.web","entity":[{"name":"Terminal in","counter":[{"name":"Sent bytes","value":23234},{"name":"Received bytes","value":690432}]}]}]}}"#
        );
    }

    #[test]
    fn udl_follows_the_xml_structure() {
        let text = udl(&seed_values());

        assert_eq!(
            text,
            "response\n   {\n   timestamp = 1194967464\n   appliance \"main.web\"\n      {\n      \
             entity \"Terminal in\"\n         {\n         \
             counter \"Sent bytes\": value = 23234\n         \
             counter \"Received bytes\": value = 690432\n         }\n      }\n   }\n"
        );
    }

    #[test]
    fn empty_attributes_and_fractions() {
        let e = Element::new("counter")
            .text("name", "x")
            .attr("alarm_below", Value::Empty)
            .attr("value", Value::Number(0.25));

        assert_eq!(
            xml(&e).lines().nth(1),
            Some(r#"<counter name="x" alarm_below="" value="0.25" />"#)
        );
        assert_eq!(
            json(&e),
            r#"{"counter":{"name":"x","alarm_below":"","value":0.25}}"#
        );
        assert_eq!(udl(&e), "counter \"x\": alarm_below = \"\", value = 0.25\n");
    }

    #[test]
    fn special_characters_are_escaped_in_every_format() {
        let nasty = "a\"<b>&'c\\d\ne\u{1b}f";
        let e = Element::new("counter").text("name", nasty);

        let x = xml(&e);
        let j = json(&e);
        let u = udl(&e);

        assert!(
            x.contains(r#"name="a&quot;&lt;b&gt;&amp;&apos;c\\d\ne\u{1b}f""#),
            "{x}"
        );
        let mut reader = quick_xml::Reader::from_str(&x);
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("not well-formed: {e}: {x}"),
            }
        }
        let parsed: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
        assert_eq!(
            parsed["counter"]["name"],
            serde_json::Value::String(escape(nasty).into_owned())
        );
        assert_eq!(u, "counter \"a\\\"<b>&'c\\\\\\\\d\\\\ne\\\\u{1b}f\"\n");
        for text in [&x, &j, &u] {
            assert!(!text.contains('\u{1b}'), "{text:?}");
        }
        assert!(!u.trim_end().contains('\n'));
    }
}
