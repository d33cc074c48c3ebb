"""Special tokens: cut out of the text before any other rule sees it.

"<|im_end|>" must become one id, not the ids of "<", "|", "im"...: a chat template
relies on it. Every tokenizer here therefore splits the text at its special (added)
tokens first and tokenizes only the stretches between them. One regex finds them all;
where two special tokens start at the same place ("<s>" and "<s>x"), the longer wins.

    >>> list(split_special("hi<|im_end|>", special_tokens_regex(["<|im_end|>"])))
    [('hi', False), ('<|im_end|>', True)]

Does not handle: the lstrip / rstrip / single_word options of Hugging Face's added
tokens (tokenizer.json files that set them are refused by the byte-level loader).
"""
from __future__ import annotations

import re

__all__ = ["special_tokens_regex", "split_special"]


def special_tokens_regex(tokens) -> re.Pattern | None:
    """A regex that finds any of the special tokens; None when there are none.

    Alternatives are tried in order, so the longest token comes first: where two
    tokens start at the same place ("<s>" and "<s>x"), the longer one wins.

    >>> special_tokens_regex(["<s>", "<s>x"]).findall("a<s>xb<s>")
    ['<s>x', '<s>']
    """
    tokens = sorted(tokens, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None


def split_special(text: str, regex: re.Pattern | None):
    """Yield (segment, is_special) in order: the special tokens and the text between them.

    >>> list(split_special("a<s>b", special_tokens_regex(["<s>"])))
    [('a', False), ('<s>', True), ('b', False)]
    """
    if regex is None:
        if text:
            yield text, False
        return
    last = 0
    for match in regex.finditer(text):
        if match.start() > last:
            yield text[last:match.start()], False
        yield match.group(), True
        last = match.end()
    if last < len(text):
        yield text[last:], False
