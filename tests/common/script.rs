//! A scripted sampler: makes a real model write a given structure (tags, outlines) at given
//! moments while it writes everything else itself.

use std::collections::{HashMap, VecDeque};

use pardec::{Model, Token, TokenScript};

/// When a segment of forced text starts.
#[derive(Debug, Clone)]
pub enum When {
    /// At the node's first sample.
    Start,
    /// As soon as the node's own text ends with this.
    EndsWith(String),
    /// As soon as the node's own text is longer than this many bytes.
    LongerThan(usize),
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub when: When,
    pub text: String,
    /// End the stream with an end-of-generation token after the text.
    pub then_eos: bool,
}

pub fn seg(when: When, text: &str) -> Segment {
    Segment { when, text: text.to_string(), then_eos: false }
}

pub fn seg_eos(when: When, text: &str) -> Segment {
    Segment { when, text: text.to_string(), then_eos: true }
}

/// Per node label ("" is the trunk), segments in order; each starts once.
pub struct Script {
    model: Model,
    segments: HashMap<String, Vec<Segment>>,
    next_segment: HashMap<String, usize>,
    queue: HashMap<String, VecDeque<Token>>,
}

impl Script {
    pub fn new(model: &Model, segments: Vec<(&str, Vec<Segment>)>) -> Script {
        Script {
            model: model.clone(),
            segments: segments.into_iter().map(|(l, s)| (l.to_string(), s)).collect(),
            next_segment: HashMap::new(),
            queue: HashMap::new(),
        }
    }
}

impl TokenScript for Script {
    fn next_token(&mut self, label: &str, text: &str) -> Option<Token> {
        if let Some(t) = self.queue.get_mut(label).and_then(VecDeque::pop_front) {
            return Some(t);
        }
        let segs = self.segments.get(label)?;
        let i = *self.next_segment.get(label).unwrap_or(&0);
        let seg = segs.get(i)?;
        let due = match &seg.when {
            When::Start => true,
            When::EndsWith(s) => text.ends_with(s.as_str()),
            When::LongerThan(n) => text.len() > *n,
        };
        if !due {
            return None;
        }
        self.next_segment.insert(label.to_string(), i + 1);
        let mut tokens: VecDeque<Token> = self.model.tokenize(&seg.text, false).unwrap().into();
        if seg.then_eos {
            tokens.push_back(self.model.eog_tokens()[0]);
        }
        let first = tokens.pop_front();
        self.queue.insert(label.to_string(), tokens);
        first
    }
}

/// A Multiverse response with three top-level paths, the second holding a nested block of two:
/// the structure is forced, the text between is the model's own.
pub fn nested_multiverse(model: &Model) -> Script {
    Script::new(
        model,
        vec![
            ("", vec![
                seg(When::Start, "<Parallel>\n<Goal>\n<Outline>1: Apples</Outline>\n<Outline>2: Pears</Outline>\n<Outline>3: Plums</Outline>\n</Goal>"),
                seg_eos(When::EndsWith("<Conclusion>\n".into()), "All three are fruit.\n</Conclusion>\n</Parallel>\nDone."),
            ]),
            ("1", vec![seg(When::LongerThan(30), "\n</Path>")]),
            ("2", vec![
                seg(When::LongerThan(16), "\n<Parallel>\n<Goal>\n<Outline>2.1: Green</Outline>\n<Outline>2.2: Red</Outline>\n</Goal>"),
                seg(When::EndsWith("<Conclusion>\n".into()), "Both kinds.\n</Conclusion>\n</Parallel>\n</Path>"),
            ]),
            ("2.1", vec![seg(When::LongerThan(24), "\n</Path>")]),
            ("2.2", vec![seg(When::LongerThan(30), "\n</Path>")]),
            ("3", vec![seg(When::LongerThan(24), "\n</Path>")]),
        ],
    )
}
