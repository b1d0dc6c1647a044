//! The port alone, without a model: what it accepts and refuses, with the reasons, and its
//! limits. The comparisons with llama.cpp itself need a model: `grammar_sampler`'s tests.

use super::Refusal;
use crate::llama::JSON_OBJECT_GBNF;

fn no_tokens(text: &[u8]) -> Result<u32, String> {
    Err(format!("no vocabulary for {}", String::from_utf8_lossy(text)))
}

fn check(text: &str, root: &str) -> Result<(), Refusal> {
    super::check(text, root, &mut no_tokens)
}

#[test]
fn port_accepts_and_refuses_without_a_model() {
    check(JSON_OBJECT_GBNF, "root").expect("the JSON grammar is valid");
    check("root ::= \"a\" [b-d]* ( x | \"y\"{2,3} )\nx ::= [^\\n] .\n", "root").unwrap();
    for (text, root, needle) in [
        ("", "root", "empty"),
        ("   \n# only a comment\n", "root", "no rules"),
        ("root ::= foo", "root", "'foo'"),
        ("root ::= \"a", "root", "unterminated"),
        ("root ::= root \"a\"", "root", "left-recursive"),
        ("root ::= a\na ::= b? root\nb ::= \"x\"", "root", "left-recursive"),
        ("root ::= \"a\"", "start", "no rule named 'start'"),
        ("root ::= \"a\"{5,2}", "root", "maximum below"),
        ("root ::= \"a\"{2001}", "root", "2000"),
        ("root ::= ( \"a\"", "root", "expecting ')'"),
        ("root := \"a\"", "root", "::="),
        ("root ::= \"\\q\"", "root", "escape"),
        ("root ::= *", "root", "item before"),
        ("root ::= \"a\" ]", "root", "newline"),
        ("root ::= <[99999999999999999999999]>", "root", "out of range"),
        ("root ::= <abc>", "root", "no vocabulary"),
    ] {
        let err = check(text, root).expect_err(text);
        assert!(err.message.contains(needle), "{text:?}: {:?} lacks {needle:?}", err.message);
    }
    // Limits: nesting, expansion, llama.cpp's exponential left-recursion walk.
    let deep = format!("root ::= {}\"a\"{}", "(".repeat(100), ")".repeat(100));
    assert!(check(&deep, "root").unwrap_err().limit);
    let big = format!("root ::= \"{}\"{{2000}}", "a".repeat(200));
    assert!(check(&big, "root").unwrap_err().limit);
    let mut doubling = String::from("root ::= a0\n");
    for i in 0..40 {
        doubling += &format!("a{i} ::= a{} \"x\" | a{} \"y\"\n", i + 1, i + 1);
    }
    doubling += "a40 ::= \"z\"\n";
    let started = std::time::Instant::now();
    assert!(check(&doubling, "root").unwrap_err().limit);
    assert!(started.elapsed().as_secs() < 10);
    // 14 levels pass llama.cpp's check but leave 2^14 stacks (1.4 s to compile there).
    let mut doubling = String::from("root ::= a0\n");
    for i in 0..14 {
        doubling += &format!("a{i} ::= a{} \"x\" | a{} \"y\"\n", i + 1, i + 1);
    }
    doubling += "a14 ::= \"z\"\n";
    let err = check(&doubling, "root").unwrap_err();
    assert!(err.limit && err.message.contains("16384 parse stacks"), "{}", err.message);
    // Left recursion through a rule that can match nothing but has no empty alternative
    // (llama.cpp accepts it, then its advance grows a stack until memory runs out).
    let err = check("r ::= x r \"a\" | \"b\"\nx ::= y\ny ::= \"\" | \"c\"", "r").unwrap_err();
    assert!(err.limit && err.message.contains("left-recursive"), "{}", err.message);
    // Enumerations are fine.
    let names: Vec<String> = (0..500).map(|i| format!("\"v{i}\"")).collect();
    check(&format!("root ::= {}", names.join(" | ")), "root").unwrap();
}
