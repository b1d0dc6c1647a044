"""Lists as `titles` blocks: the rewrite is a block `pardec check` accepts, each branch holds only
its item's body after the head the engine prefills, and flattening gives the list back."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pardec_cli  # noqa: E402
from multiverse_text import parse_list_answer  # noqa: E402
from titles_text import branch_head, strip_titles_tags, titles_response  # noqa: E402

ANSWER = """Here are 3 tips for saving money:

1. **Create a budget**: Track your income and expenses every month.
2. Cook at home: eating out costs more than cooking your own meals.
3. **Cancel subscriptions**: Drop the ones you no longer use.

By following these tips, you can save money."""


def test_the_rewrite_is_a_well_formed_block():
    response = titles_response(parse_list_answer(ANSWER))
    ok, said = pardec_cli.check("<|im_start|>assistant\n" + response + "<|im_end|>", "titles")
    assert ok, said
    assert response.startswith("Here are 3 tips for saving money:\n\n<issue_start>Create a budget<issue_comment>")
    assert "<issue_start>Cancel subscriptions<issue_comment><issue_closed><jupyter_start>1. **Create a budget**:" in response
    # A branch holds its head (prefilled by the engine) and the body, not the title again.
    assert f"{branch_head(2, 'Cook at home')} eating out costs more" in response
    assert response.endswith("<jupyter_text><jupyter_code>\n\nBy following these tips, you can save money.")


def test_a_list_with_no_closing_ends_at_the_join():
    response = titles_response(parse_list_answer("1. One two three four.\n2. Five six seven eight."))
    assert response.endswith("<jupyter_text><jupyter_code>")
    ok, said = pardec_cli.check(response, "titles")
    assert ok, said


def test_flattening_gives_the_list_back():
    flat = strip_titles_tags(titles_response(parse_list_answer(ANSWER)))
    assert flat.splitlines() == [
        "Here are 3 tips for saving money:", "",
        "1. **Create a budget**: Track your income and expenses every month.",
        "2. **Cook at home**: eating out costs more than cooking your own meals.",
        "3. **Cancel subscriptions**: Drop the ones you no longer use.", "",
        "By following these tips, you can save money."]
