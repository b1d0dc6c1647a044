//! The published formats, as data, and pardec's own. This is the only file that knows the
//! papers: everything else reads a [`ProtocolSpec`] (or a [`SubSearchFormat`] /
//! [`SkeletonFormat`]).

use super::skeleton::SkeletonFormat;
use super::spec::{Announce, BadPlan, Bans, LabelRule, ProtocolSpec, MAX_SUPPORTED_BRANCHES};
use super::subsearch::{ChildPrompt, SubSearchFormat};
use crate::layout_rules::{JoinRule, TrainRule};

fn s(x: &str) -> String {
    x.to_string()
}

fn numbered(open: &str, close: &str) -> Announce {
    Announce::Tagged { open: s(open), close: s(close), label: LabelRule::Numbered { separator: s(":") } }
}

impl ProtocolSpec {
    /// Names accepted by [`ProtocolSpec::builtin`].
    pub fn builtin_names() -> &'static [&'static str] {
        &["multiverse", "npr", "threadweaver", "parallel-r1", "aspd", "titles"]
    }

    /// A published format by name (case-insensitive), as its system's released inference
    /// engine runs it (the repositories are named in the README's fidelity table):
    ///
    /// - `multiverse` (arXiv 2506.09991; engine: Multiverse-Engine, sglang): after `</Goal>` the
    ///   trunk holds one `\n`, then each path starts `<Path>\n{label}:` at the same position, is
    ///   ended by `</Path>` plus the one token the model samples after it (usually `\n`), and the
    ///   trunk continues at max + 1 with `<Conclusion>\n` (same-max). Any dotted label is
    ///   accepted as written, repeats included; blocks nest 6 deep.
    /// - `npr` (Native Parallel Reasoner, its sglang rollout): the same mechanics with
    ///   `<guideline><plan>1: …</plan></guideline>`, steps `<step>\n{label}:`, join
    ///   `<takeaway>\n`; a block with no plan or more than 5 ends the stream.
    /// - `threadweaver` (its RL rollout loop): `</Outlines>` forks threads `\n<Thread>\n{label}:`
    ///   (the `\n` is shared), each ends at `</Thread>`, and the parent re-reads the threads as
    ///   one serial text (reprefill), then `\n`; the model writes `</Parallel>` itself.
    /// - `parallel-r1` (arXiv 2509.07980, its v3 generation loop): every `<Parallel>` forks 2
    ///   paths starting `<Path>`; a path ended by end-of-generation or its budget is closed with
    ///   `</Path>`; the parent re-reads the paths serially, then `</Parallel>\n<Summary>`, and
    ///   the block closes at `</Summary>`; the response ends after its fourth block.
    /// - `aspd` (arXiv 2508.08895): serial text with `<|title|>T<|/title|>…` then `<|para|>`;
    ///   branches `<|branch|>T: …<|/branch|>`; join `<|/para|>\n` (which also closes the block).
    ///
    /// - `titles` (pardec's own, not a paper's): ASPD's rule with nothing decoded that a plain
    ///   answer does not have. Serial text, then `<issue_start>T<issue_comment>` per item and
    ///   `<issue_closed>`; each branch starts `<jupyter_start>{index}. **{title}**:`, prefilled
    ///   in one batch (the title is decoded once, in the outline), writes only the item's body
    ///   and ends at `<jupyter_text>`; the join appends `<jupyter_code>` (same-max) and serial
    ///   text goes on. The tags are control tokens SmolLM2's (StarCoder's) vocabulary carries
    ///   and its chat model never writes, so each costs one decode step; in other vocabularies
    ///   they are plain text. Its tags are single tokens, so the derived bans hold them where
    ///   they mean nothing, and once 10 titles stand, or one repeats an earlier one, the title
    ///   tag is banned: the model must fork (`fork_at_cap_or_repeat`).
    ///
    /// Multiverse, NPR, ThreadWeaver and Parallel-R1 ban no tag: their engines sample freely,
    /// and a tag where it means nothing is text (with a warning). ASPD's engine constrains its
    /// serial decoding, so it keeps the derived bans.
    pub fn builtin(name: &str) -> Option<ProtocolSpec> {
        let free = || Some(Bans::default());
        let spec = match name.to_ascii_lowercase().as_str() {
            "multiverse" => ProtocolSpec {
                name: s("multiverse"),
                block_open: Some(s("<Parallel>")),
                plan_open: Some(s("<Goal>")),
                announce: numbered("<Outline>", "</Outline>"),
                trigger: s("</Goal>"),
                branch_open: s("<Path>"),
                branch_prefix: s("<Path>\n{label}:"),
                branch_end: s("</Path>"),
                join_text: s("<Conclusion>\n"),
                summary_open: Some(s("<Conclusion>")),
                summary_close: Some(s("</Conclusion>")),
                block_close: Some(s("</Parallel>")),
                max_depth: 6,
                max_branches: MAX_SUPPORTED_BRANCHES,
                branch_prefix_parts: Vec::new(),
                trigger_in_cache: true,
                join_repeats_last: false,
                fork_text: s("\n"),
                keep_after_end: 1,
                close_unfinished: false,
                join_rule: JoinRule::SameMax,
                check_labels: false,
                max_blocks: None,
                on_bad_plan: BadPlan::Fallback,
                fork_at_cap_or_repeat: false,
                train_rule: Some(TrainRule::SharedStart),
                bans: free(),
            },
            // NPR's rollout engine is Multiverse's sglang engine with NPR's tags.
            "npr" => ProtocolSpec {
                name: s("npr"),
                block_open: Some(s("<guideline>")),
                plan_open: None,
                announce: numbered("<plan>", "</plan>"),
                trigger: s("</guideline>"),
                branch_open: s("<step>"),
                branch_prefix: s("<step>\n{label}:"),
                branch_end: s("</step>"),
                join_text: s("<takeaway>\n"),
                summary_open: Some(s("<takeaway>")),
                summary_close: None,
                block_close: Some(s("</takeaway>")),
                max_branches: 5,
                on_bad_plan: BadPlan::EndStream,
                ..Self::builtin("multiverse")?
            },
            "threadweaver" => ProtocolSpec {
                name: s("threadweaver"),
                block_open: Some(s("<Parallel>")),
                plan_open: Some(s("<Outlines>")),
                announce: numbered("<Outline>", "</Outline>"),
                trigger: s("</Outlines>"),
                branch_open: s("<Thread>"),
                branch_prefix: s("<Thread>\n{label}:"),
                branch_end: s("</Thread>"),
                join_text: s("\n"),
                summary_open: None,
                summary_close: None,
                block_close: Some(s("</Parallel>")),
                max_depth: 1,
                max_branches: MAX_SUPPORTED_BRANCHES,
                branch_prefix_parts: Vec::new(),
                trigger_in_cache: true,
                join_repeats_last: false,
                fork_text: s("\n"),
                keep_after_end: 0,
                close_unfinished: true,
                join_rule: JoinRule::Reprefill,
                check_labels: true,
                max_blocks: None,
                on_bad_plan: BadPlan::Fallback,
                fork_at_cap_or_repeat: false,
                train_rule: Some(TrainRule::SerialWithCopies),
                bans: free(),
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
                join_text: s("</Parallel>\n<Summary>"),
                summary_open: Some(s("<Summary>")),
                summary_close: None,
                block_close: Some(s("</Summary>")),
                max_depth: 1,
                max_branches: 16,
                branch_prefix_parts: Vec::new(),
                trigger_in_cache: true,
                join_repeats_last: false,
                fork_text: String::new(),
                keep_after_end: 0,
                close_unfinished: true,
                join_rule: JoinRule::Reprefill,
                check_labels: true,
                max_blocks: Some(4),
                on_bad_plan: BadPlan::Fallback,
                fork_at_cap_or_repeat: false,
                train_rule: Some(TrainRule::SameMax),
                bans: free(),
            },
            "aspd" => ProtocolSpec {
                name: s("aspd"),
                block_open: None,
                plan_open: None,
                announce: Announce::Tagged {
                    open: s("<|title|>"),
                    close: s("<|/title|>"),
                    label: LabelRule::Title { verbatim: true },
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
                branch_prefix_parts: vec![s("<|branch|>"), s("{title}"), s(":"), s(" ")],
                trigger_in_cache: false,
                join_repeats_last: true,
                fork_text: String::new(),
                keep_after_end: 0,
                close_unfinished: true,
                join_rule: JoinRule::SameSeq,
                check_labels: true,
                max_blocks: None,
                on_bad_plan: BadPlan::Fallback,
                fork_at_cap_or_repeat: false,
                train_rule: Some(TrainRule::SameSeq),
                // Its serial decoding bans the block's tags where they mean nothing (a logits
                // processor); pardec's derived bans are that list.
                bans: None,
            },
            "titles" => ProtocolSpec {
                name: s("titles"),
                block_open: None,
                plan_open: None,
                announce: Announce::Tagged {
                    open: s("<issue_start>"),
                    close: s("<issue_comment>"),
                    label: LabelRule::Title { verbatim: false },
                },
                trigger: s("<issue_closed>"),
                branch_open: s("<jupyter_start>"),
                branch_prefix: s("<jupyter_start>{index}. **{title}**:"),
                branch_end: s("<jupyter_text>"),
                join_text: s("<jupyter_code>"),
                summary_open: None,
                summary_close: None,
                block_close: Some(s("<jupyter_code>")),
                max_depth: 1,
                max_branches: 10,
                branch_prefix_parts: Vec::new(),
                trigger_in_cache: true,
                join_repeats_last: false,
                fork_text: String::new(),
                keep_after_end: 0,
                close_unfinished: true,
                join_rule: JoinRule::SameMax,
                check_labels: true,
                max_blocks: None,
                on_bad_plan: BadPlan::Fallback,
                fork_at_cap_or_repeat: true,
                train_rule: None,
                bans: None,
            },
            _ => return None,
        };
        Some(spec)
    }
}

impl SubSearchFormat {
    /// APR (arXiv 2504.15466; its `src/eval/eval_apr.py` and `parallel_infernce_utils.py`):
    /// the parent writes `<Calling Sub Searches>`, one `<Start Sub Search i at level 1> Moving to
    /// Node #id` line per child, then `<End Calling Sub Searches>`. Each child is prompted with
    /// its node's state rebuilt from the parent's trace (`Moving to Node #id\nCurrent State:
    /// T:[…], Operations: […]`, on its own prompt); it succeeded if it wrote `Goal Reached`
    /// twice. The parent resumes from the text before the calls, then `<Sub Searches>\n`, per
    /// child `<Goal Reached in Sub Search i at level 1 at Node #id>\n{path}\n` or `<No Solution
    /// in Sub Search i at level 1 at Node #id>\n`, then `<End Sub Searches>\n`.
    pub fn apr() -> SubSearchFormat {
        SubSearchFormat {
            call_open: s("<Calling Sub Searches>"),
            call_item: s("<Start Sub Search {index} at level {level}>"),
            call_item_end: None,
            call_close: s("<End Calling Sub Searches>"),
            results_open: s("<Sub Searches>"),
            result_line: s("Sub search {index} at level {level} returned: {result}"),
            results_close: s("<End Sub Searches>"),
            node_marker: Some(s("Moving to Node #")),
            child_prompt: ChildPrompt::CountdownState,
            success_marker: Some(s("Goal Reached")),
            result_found: Some(s("<Goal Reached in Sub Search {index} at level {level} at Node #{node}>\n{result}\n")),
            result_none: Some(s("<No Solution in Sub Search {index} at level {level} at Node #{node}>\n")),
            resume_before_calls: true,
            renumber: true,
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
            expand_instruction: s("\n\nNow write the answer. Expand every point of the outline in one or two \
                sentences, keeping its number.\n"),
            // Bold points keep small models from treating the prefix as the next list line.
            point_prefix: s("{index}. **{point}**:"),
            point_end: s("\n"),
        }
    }
}
