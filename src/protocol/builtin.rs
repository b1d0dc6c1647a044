//! The published formats, as data. This is the only file that knows the papers: everything
//! else reads a [`ProtocolSpec`] (or a [`SubSearchFormat`] / [`SkeletonFormat`]).

use super::skeleton::SkeletonFormat;
use super::spec::{Announce, LabelRule, ProtocolSpec};
use super::subsearch::SubSearchFormat;

fn s(x: &str) -> String {
    x.to_string()
}

fn numbered(open: &str, close: &str) -> Announce {
    Announce::Tagged { open: s(open), close: s(close), label: LabelRule::Numbered { separator: s(":") } }
}

impl ProtocolSpec {
    /// Names accepted by [`ProtocolSpec::builtin`].
    pub fn builtin_names() -> &'static [&'static str] {
        &["multiverse", "aspd", "parallel-r1", "threadweaver", "npr"]
    }

    /// A published format by name (case-insensitive):
    ///
    /// - `multiverse` (arXiv 2506.09991): `<Parallel><Goal><Outline>1: …</Outline>…</Goal>`,
    ///   paths `\n<Path>\n1: …</Path>`, join `<Conclusion>\n`, closed by `</Conclusion></Parallel>`;
    ///   a path may hold one nested block (labels `2.1`), so `max_depth` is 2.
    /// - `aspd` (arXiv 2508.08895): serial text with `<|title|>T<|/title|>…` then `<|para|>`;
    ///   branches `<|branch|>T: …<|/branch|>`; join `<|/para|>\n` (which also closes the block).
    /// - `parallel-r1` (arXiv 2509.07980): `<Parallel><Path>…</Path>…<Summary>…</Summary></Parallel>`;
    ///   nothing is announced, so every `<Parallel>` forks a fixed 2 paths (use sampling, or
    ///   they are identical).
    /// - `threadweaver`: `<Parallel><Outlines><Outline>1: …</Outline>…</Outlines>`, threads
    ///   `\n<Thread> 1: …</Thread>`, join `</Parallel>\n`.
    /// - `npr`: `<guideline><plan>1: …</plan>…</guideline>`, steps `<step>1: …</step>`, join
    ///   `<takeaway>`, closed by `</takeaway>`.
    pub fn builtin(name: &str) -> Option<ProtocolSpec> {
        let spec = match name.to_ascii_lowercase().as_str() {
            "multiverse" => ProtocolSpec {
                name: s("multiverse"),
                block_open: Some(s("<Parallel>")),
                plan_open: Some(s("<Goal>")),
                announce: numbered("<Outline>", "</Outline>"),
                trigger: s("</Goal>"),
                branch_open: s("<Path>"),
                branch_prefix: s("\n<Path>\n{label}:"),
                branch_end: s("</Path>"),
                join_text: s("<Conclusion>\n"),
                summary_open: Some(s("<Conclusion>")),
                summary_close: Some(s("</Conclusion>")),
                block_close: Some(s("</Parallel>")),
                max_depth: 2,
                max_branches: 16,
                bans: None,
            },
            "aspd" => ProtocolSpec {
                name: s("aspd"),
                block_open: None,
                plan_open: None,
                announce: Announce::Tagged {
                    open: s("<|title|>"),
                    close: s("<|/title|>"),
                    label: LabelRule::Title,
                },
                trigger: s("<|para|>"),
                branch_open: s("<|branch|>"),
                branch_prefix: s("<|branch|>{title}: "),
                branch_end: s("<|/branch|>"),
                join_text: s("<|/para|>\n"),
                summary_open: None,
                summary_close: None,
                block_close: Some(s("<|/para|>")),
                max_depth: 1,
                max_branches: 16,
                bans: None,
            },
            "parallel-r1" => ProtocolSpec {
                name: s("parallel-r1"),
                block_open: None,
                plan_open: None,
                announce: Announce::Fixed { count: 2 },
                trigger: s("<Parallel>"),
                branch_open: s("<Path>"),
                branch_prefix: s("<Path>"),
                branch_end: s("</Path>"),
                join_text: s("<Summary>"),
                summary_open: Some(s("<Summary>")),
                summary_close: Some(s("</Summary>")),
                block_close: Some(s("</Parallel>")),
                max_depth: 1,
                max_branches: 16,
                bans: None,
            },
            "threadweaver" => ProtocolSpec {
                name: s("threadweaver"),
                block_open: Some(s("<Parallel>")),
                plan_open: Some(s("<Outlines>")),
                announce: numbered("<Outline>", "</Outline>"),
                trigger: s("</Outlines>"),
                branch_open: s("<Thread>"),
                branch_prefix: s("\n<Thread> {label}:"),
                branch_end: s("</Thread>"),
                join_text: s("</Parallel>\n"),
                summary_open: None,
                summary_close: None,
                block_close: Some(s("</Parallel>")),
                max_depth: 1,
                max_branches: 16,
                bans: None,
            },
            "npr" => ProtocolSpec {
                name: s("npr"),
                block_open: Some(s("<guideline>")),
                plan_open: None,
                announce: numbered("<plan>", "</plan>"),
                trigger: s("</guideline>"),
                branch_open: s("<step>"),
                branch_prefix: s("<step>{label}:"),
                branch_end: s("</step>"),
                join_text: s("<takeaway>"),
                summary_open: Some(s("<takeaway>")),
                summary_close: None,
                block_close: Some(s("</takeaway>")),
                max_depth: 1,
                max_branches: 16,
                bans: None,
            },
            _ => return None,
        };
        Some(spec)
    }
}

impl SubSearchFormat {
    /// APR (arXiv 2504.15466): the parent writes `<Calling Sub Searches>`, then
    /// `<Start Sub Search i at level L> {child prompt}` per child, then
    /// `<End Calling Sub Searches>`; it gets back a `<Sub Searches>` … `<End Sub Searches>`
    /// block. The result line is this project's wording.
    pub fn apr() -> SubSearchFormat {
        SubSearchFormat {
            call_open: s("<Calling Sub Searches>"),
            call_item: s("<Start Sub Search {index} at level {level}>"),
            call_item_end: Some(s("<End Sub Search {index} at level {level}>")),
            call_close: s("<End Calling Sub Searches>"),
            results_open: s("<Sub Searches>"),
            result_line: s("Sub search {index} at level {level} returned: {result}"),
            results_close: s("<End Sub Searches>"),
        }
    }
}

impl SkeletonFormat {
    /// Skeleton-of-Thought (arXiv 2307.15337), in this project's own wording: ask for a
    /// numbered skeleton of 3–10 points of a few words, then expand every point in 1–2
    /// sentences, one branch per point.
    pub fn sot() -> SkeletonFormat {
        SkeletonFormat {
            request: s("Do not answer the question yet. First write only the outline of a good answer: \
                a numbered list of 3 to 10 short points, a few words each (no more than six), \
                one point per line, with no explanations.\n\nQuestion: {question}"),
            primer: s("1."),
            min_points: 2,
            max_points: 10,
            expand_instruction: s(
                "\n\nNow write the answer. Expand every point of the outline in one or two \
                sentences, keeping its number.\n",
            ),
            // Bold points keep small models from treating the prefix as the next list line.
            point_prefix: s("{index}. **{point}**:"),
            point_end: s("\n"),
        }
    }
}
