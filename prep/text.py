"""Text every part can take: a message with undecodable bytes made safe for the tokenizer and the crisis detector.

Shared by the chat front ends (terminal and web) and the crisis detector, so a message is cleaned one way.
"""

from __future__ import annotations


def clean_message(text: str) -> str:
    """A message's text with undecodable bytes (lone surrogates from a non-UTF-8 terminal or browser) as U+FFFD,
    which the tokenizer and the crisis detector can take."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # bytes Python could not decode: back to bytes, then U+FFFD
    except UnicodeEncodeError:  # other lone surrogates (a browser's): "?"
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")
