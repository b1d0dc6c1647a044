"""Answers as lists, and lists as Multiverse blocks (the layout pardec's `multiverse` built-in
decodes: `</Goal>` then one shared `\\n`, each path `<Path>\\n{i}:` ... `</Path>`, then the
engine's `\\n`, `<Conclusion>\\n` forced at the join, the model closing the block)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

ITEM = re.compile(r"^\s*(?:(\d{1,2})[.)]|[-*•])\s+(.*\S)\s*$")
BOLD_HEAD = re.compile(r"^\*\*(.+?)\*\*\s*:?\s*")
COLON_HEAD = re.compile(r"^([^:.!?]{2,60}):\s+")
TAG = re.compile(r"</?(?:Parallel|Goal|Outline|Path|Conclusion)>")
MAX_TITLE_WORDS = 6


@dataclass
class Item:
    title: str
    body: str
    head: int = 0  # bytes of `body` that restate the title (its bold lead, or its first words)

    def content(self) -> str:
        """The body after its head: what the independence check scores."""
        return self.body[self.head:]


@dataclass
class ListAnswer:
    intro: str
    items: List[Item]
    closing: str

    def flat(self) -> str:
        """The answer as a serial list (what a reader gets once the tags are removed)."""
        parts = [self.intro] if self.intro else []
        parts += [f"{i}. {it.body}" for i, it in enumerate(self.items, start=1)]
        if self.closing:
            parts.append(self.closing)
        return "\n".join(parts)


def item_of(text: str) -> Item:
    """An item titled by its head: its bold lead or the text before a colon, else its first
    words."""
    for pattern in (BOLD_HEAD, COLON_HEAD):
        m = pattern.match(text)
        if m and len(m.group(1).split()) <= MAX_TITLE_WORDS + 2:
            return Item(m.group(1).strip().rstrip(":"), text, len(m.group(0).rstrip()))
    words = re.split(r"[,.;:!?]", text, maxsplit=1)[0].split()[:MAX_TITLE_WORDS]
    head = re.match(r"\s*" + r"\s+".join(map(re.escape, words)), text)
    return Item(" ".join(words), text, head.end() if head else 0)


def parse_list_answer(text: str, min_items: int = 2, max_items: int = 8) -> Optional[ListAnswer]:
    """The answer's intro, its one run of list items (an item's continuation lines belong to
    it) and its closing text; None unless the body is one list of min..max items, numbered in
    order when numbered, each with a few words."""
    lines = text.strip().splitlines()
    first = next((i for i, l in enumerate(lines) if ITEM.match(l)), None)
    if first is None:
        return None
    items: List[str] = []
    numbers: List[Optional[str]] = []
    end = first
    i = first
    while i < len(lines):
        line = lines[i]
        m = ITEM.match(line)
        if m:
            items.append(m.group(2))
            numbers.append(m.group(1))
            end = i + 1
        elif line.strip() == "":
            # A blank line inside the list is allowed if another item follows.
            nxt = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
            if nxt is None or not ITEM.match(lines[nxt]):
                break
        elif items and lines[i - 1].strip() != "":
            items[-1] += " " + line.strip()
            end = i + 1
        else:
            break
        i += 1
    if not (min_items <= len(items) <= max_items):
        return None
    if any(n is not None for n in numbers) and numbers != [str(k) for k in range(1, len(items) + 1)]:
        return None
    if any(len(it.split()) < 3 for it in items) or any(TAG.search(it) for it in items):
        return None
    intro = "\n".join(lines[:first]).strip()
    closing = "\n".join(lines[end:]).strip()
    if ITEM.search(closing) or TAG.search(intro + closing):
        return None
    return ListAnswer(intro, [item_of(it) for it in items], closing)


def multiverse_response(answer: ListAnswer) -> str:
    """The answer rewritten as one Multiverse block."""
    out = (answer.intro + "\n") if answer.intro else ""
    out += "<Parallel>\n<Goal>\n"
    out += "".join(f"<Outline>{i}: {it.title}</Outline>\n" for i, it in enumerate(answer.items, start=1))
    out += "</Goal>\n"
    out += "\n".join(f"<Path>\n{i}: {it.body}</Path>" for i, it in enumerate(answer.items, start=1))
    out += "\n<Conclusion>\n" + answer.closing + "</Conclusion>\n</Parallel>"
    return out


def strip_tags(text: str) -> str:
    """A Multiverse response flattened for a reader: tags and path labels removed, outlines
    dropped (they repeat the paths' heads)."""
    text = re.sub(r"<Goal>.*?</Goal>\n?", "", text, flags=re.S)
    text = re.sub(r"<Path>\n?(\d+(?:\.\d+)*):\s*", lambda m: f"{m.group(1)}. ", text)
    text = TAG.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
