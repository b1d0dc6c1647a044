"""The list rewrite the data builder uses: what is a list, what its titles are, and that the
rewrite is a block `pardec check` accepts and flattens back to the list."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pardec_cli  # noqa: E402
from multiverse_text import item_of, multiverse_response, parse_list_answer, strip_tags  # noqa: E402

ANSWER = """Here are 3 tips for saving money:

1. **Create a budget**: Track your income and expenses every month.
2. Cook at home: eating out costs more
than cooking your own meals.

3. Cancel the subscriptions you no longer use.

By following these tips, you can save money."""


def test_a_numbered_list_with_intro_continuation_lines_and_closing():
    a = parse_list_answer(ANSWER)
    assert a.intro == "Here are 3 tips for saving money:"
    assert [i.title for i in a.items] == ["Create a budget", "Cook at home", "Cancel the subscriptions you no longer"]
    assert a.items[1].body == "Cook at home: eating out costs more than cooking your own meals."
    assert a.closing == "By following these tips, you can save money."
    # The head restating the title is not content.
    assert a.items[0].content() == " Track your income and expenses every month."
    assert a.items[2].content() == " use."


def test_what_is_not_a_list_stays_serial():
    assert parse_list_answer("The capital of France is Paris.") is None
    assert parse_list_answer("1. Only one item here.") is None
    assert parse_list_answer("1. First item words.\n3. Skipped a number here.") is None
    assert parse_list_answer("1. A <Path> tag inside.\n2. Second item words.") is None
    assert parse_list_answer("1. One two three.\n2. Four five six.\nThen:\n1. Again one two.") is None


def test_titles_come_from_bold_leads_colons_or_first_words():
    assert item_of("**Sleep** well every night").title == "Sleep"
    assert item_of("Drink water: two litres a day").title == "Drink water"
    assert item_of("Walk for twenty minutes after lunch, every day").title == "Walk for twenty minutes after lunch"


def test_the_rewrite_is_a_well_formed_block_that_flattens_back():
    a = parse_list_answer(ANSWER)
    response = multiverse_response(a)
    ok, said = pardec_cli.check("<|im_start|>assistant\n" + response + "<|im_end|>", "multiverse")
    assert ok, said
    assert response.count("<Path>\n") == 3 and "</Goal>\n<Path>\n1: **Create" in response
    assert "</Path>\n<Conclusion>\nBy following" in response
    flat = strip_tags(response)
    assert [l for l in flat.splitlines() if l.strip()] == [l for l in a.flat().splitlines() if l.strip()]
