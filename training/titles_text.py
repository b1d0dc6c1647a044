"""Lists as blocks of pardec's `titles` protocol: each item's title is decoded once, in the
outline, and is the prefilled head of its branch, so a branch writes only the item's body; the
tags are single control tokens of SmolLM2's vocabulary. Nothing is decoded that the plain list
does not hold, except one tag per title edge, the trigger and one end tag per branch.

    {intro}\\n\\n<issue_start>T1<issue_comment>…<issue_closed>
    <jupyter_start>1. **T1**: body 1<jupyter_text>…   (branches; the engine writes their heads)
    <jupyter_code>\\n\\n{closing}                       (the join tag, then serial text again)
"""

from __future__ import annotations

import re

from multiverse_text import ListAnswer

TITLE_OPEN, TITLE_CLOSE, TRIGGER = "<issue_start>", "<issue_comment>", "<issue_closed>"
BRANCH_OPEN, BRANCH_END, JOIN = "<jupyter_start>", "<jupyter_text>", "<jupyter_code>"
TAG = re.compile("|".join(map(re.escape, (TITLE_OPEN, TITLE_CLOSE, TRIGGER, BRANCH_OPEN, BRANCH_END, JOIN))))


def branch_head(index: int, title: str) -> str:
    """What the engine prefills at the start of branch `index` (1-based): the protocol's
    `branch_prefix`."""
    return f"{BRANCH_OPEN}{index}. **{title}**:"


def titles_response(answer: ListAnswer) -> str:
    """The answer rewritten as one `titles` block: its intro, the outline, one branch per item
    (the item's content after its head), the join and its closing text."""
    out = (answer.intro + "\n\n") if answer.intro else ""
    out += "".join(f"{TITLE_OPEN}{it.title}{TITLE_CLOSE}" for it in answer.items) + TRIGGER
    out += "".join(f"{branch_head(i, it.title)}{body_of(it)}{BRANCH_END}"
                   for i, it in enumerate(answer.items, start=1))
    out += JOIN
    if answer.closing:
        out += "\n\n" + answer.closing
    return out


def body_of(item) -> str:
    """An item's content after its head, starting with a space as it does after `**T**:`."""
    content = item.content().strip()
    return " " + content if content else ""


def strip_titles_tags(text: str) -> str:
    """A `titles` response flattened for a reader: the outline dropped (the branches' heads
    repeat it), each branch on its own line, tags removed."""
    text = re.sub(re.escape(TITLE_OPEN) + r".*?" + re.escape(TRIGGER), "", text, flags=re.S)
    text = text.replace(BRANCH_END, "\n")
    text = TAG.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
