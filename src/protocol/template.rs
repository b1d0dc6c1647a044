//! Text templates with `{name}` placeholders: rendering, and matching a rendered instance
//! whose placeholders hold numbers (used to find headers such as `<Start Sub Search 2 at
//! level 1>`). A `{` that does not start `{name}` with a lowercase/underscore name is literal.

/// One part of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part<'a> {
    Literal(&'a str),
    Slot(&'a str),
}

/// Splits a template into literal runs and `{name}` slots.
pub(crate) fn parts(template: &str) -> Vec<Part<'_>> {
    let mut out = Vec::new();
    let mut lit_start = 0;
    let mut i = 0;
    let b = template.as_bytes();
    while i < b.len() {
        if b[i] == b'{' {
            let name_len = b[i + 1..].iter().take_while(|c| c.is_ascii_lowercase() || **c == b'_').count();
            let close = i + 1 + name_len;
            if name_len > 0 && close < b.len() && b[close] == b'}' {
                if lit_start < i {
                    out.push(Part::Literal(&template[lit_start..i]));
                }
                out.push(Part::Slot(&template[i + 1..close]));
                i = close + 1;
                lit_start = i;
                continue;
            }
        }
        i += 1;
    }
    if lit_start < template.len() {
        out.push(Part::Literal(&template[lit_start..]));
    }
    out
}

/// The placeholder names of a template, in order.
pub(crate) fn placeholders(template: &str) -> Vec<&str> {
    parts(template)
        .into_iter()
        .filter_map(|p| match p {
            Part::Slot(name) => Some(name),
            Part::Literal(_) => None,
        })
        .collect()
}

/// Renders a template; a slot `value` does not know is kept as written.
pub(crate) fn render<'v>(template: &str, value: impl Fn(&str) -> Option<&'v str>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    for part in parts(template) {
        match part {
            Part::Literal(s) => out.push_str(s),
            Part::Slot(name) => match value(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
    }
    out
}

/// Matches an instance of `template` at the start of `text`, each slot holding 1–9 ASCII
/// digits. Returns the slot values (in order) and the matched length.
pub(crate) fn match_numeric(template: &[Part<'_>], text: &str) -> Option<(Vec<u32>, usize)> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut values = Vec::new();
    for part in template {
        match part {
            Part::Literal(lit) => {
                if !b[i..].starts_with(lit.as_bytes()) {
                    return None;
                }
                i += lit.len();
            }
            Part::Slot(_) => {
                let n = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                if n == 0 || n > 9 {
                    return None;
                }
                values.push(text[i..i + n].parse().ok()?);
                i += n;
            }
        }
    }
    Some((values, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_render() {
        assert_eq!(parts("a{label}b{x"), vec![Part::Literal("a"), Part::Slot("label"), Part::Literal("b{x")]);
        assert_eq!(placeholders("{index}. {point} {}"), vec!["index", "point"]);
        let r = render("<{a}|{b}>", |n| if n == "a" { Some("1") } else { None });
        assert_eq!(r, "<1|{b}>");
    }

    #[test]
    fn numeric_matching() {
        let t = parts("<S {index} at {level}>");
        assert_eq!(match_numeric(&t, "<S 12 at 3> rest"), Some((vec![12, 3], 11)));
        assert_eq!(match_numeric(&t, "<S x at 3>"), None);
        assert_eq!(match_numeric(&t, "<S 1 at 3"), None);
        assert_eq!(match_numeric(&t, "<S 1234567890 at 3>"), None);
    }
}
