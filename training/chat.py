"""Conversations and preference pairs as token ids: the chat template, its role markers, and the records refused.

A conversation is `<|role|>content<|end|>` per message. The markers are special tokens appended to the
base model's tokenizer in one fixed order (`CHAT_TOKENS`), so a tokenizer always grows into the same ids.
Crucible encodes message by message, which tells which tokens are the assistant's (the ones learned);
`CHAT_TEMPLATE` renders the same text for transformers' `apply_chat_template`, and since special tokens
split the text before byte-level BPE runs, both give the same ids (checked on conversations in the tests).

Bad records are never dropped silently: each is counted under a reason and kept with its line number
(`Rejected`), and records read = kept + rejected.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pipeline.ground.records import text_lines

ROLES = ("system", "user", "assistant", "tool")
END = "<|end|>"  # ends every message; the assistant's is learned, and generation stops at it


def marker(role: str) -> str:
    return f"<|{role}|>"


CHAT_TOKENS = (*map(marker, ROLES), END)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

Messages = list[dict[str, str]]


class Rejection(Exception):
    """Why one record cannot be used: a reason (a counter's key) and what was found."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def grow_tokenizer(base_file: Path) -> tuple[Any, list[int]]:
    """The base tokenizer with the chat markers it lacks appended as special tokens, and their new ids."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(base_file))
    missing = [token for token in CHAT_TOKENS if tokenizer.token_to_id(token) is None]
    tokenizer.add_special_tokens(missing)
    return tokenizer, cast(list[int], [tokenizer.token_to_id(token) for token in missing])  # all added just now


def has_chat_tokens(tokenizer: Any) -> bool:
    return all(tokenizer.token_to_id(token) is not None for token in CHAT_TOKENS)


def check_messages(messages: Any, needs_assistant: bool = True) -> Messages:
    """`messages` as a list of {role, content}, or the Rejection that says what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise Rejection("no_messages", f"expected a non-empty list of messages, got {type(messages).__name__}")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise Rejection("bad_message", "a message must be an object with a string `content`")
        if message.get("role") not in ROLES:
            raise Rejection("unknown_role", f"role {message.get('role')!r} is not one of {', '.join(ROLES)}")
    if needs_assistant and not any(m["role"] == "assistant" for m in messages):
        raise Rejection("no_assistant_turn", "no message has role `assistant`: nothing to learn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def as_messages(value: Any, role: str) -> Messages:
    """TRL's two layouts: plain text (one message of `role`) or a list of messages."""
    return (
        [{"role": role, "content": value}] if isinstance(value, str) else check_messages(value, needs_assistant=False)
    )


class ChatCodec:
    """Token ids of conversations with a tokenizer that holds the chat markers."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.role_ids = {role: tokenizer.token_to_id(marker(role)) for role in ROLES}
        self.end_id = tokenizer.token_to_id(END)
        self.specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]

    def encode(self, messages: Messages, learned: tuple[str, ...] = ("assistant",)) -> tuple[list[int], list[bool]]:
        """(ids, learn) of a conversation: learn[i] is True where token i is a target the loss counts,
        the content and `<|end|>` of every message whose role is in `learned`."""
        for message in messages:  # transformers' template would read such text as the marker itself
            found = next((s for s in self.specials if s in message["content"]), None)
            if found is not None:
                raise Rejection("marker_in_content", f"a {message['role']} message holds the special token {found!r}")
        contents = self.tokenizer.encode_batch([m["content"] for m in messages], add_special_tokens=False)
        ids: list[int] = []
        learn: list[bool] = []
        for message, content in zip(messages, contents):
            learnt = message["role"] in learned
            ids += [self.role_ids[message["role"]], *content.ids, self.end_id]
            learn += [False] + [learnt] * (len(content.ids) + 1)
        return ids, learn

    def prompt(self, messages: Messages) -> list[int]:
        """A conversation followed by the assistant's marker: what the model continues (add_generation_prompt)."""
        return self.encode(messages)[0] + [self.role_ids["assistant"]]


@dataclass
class Ledger:
    """Records read, kept and rejected (by reason, with their line and raw text): read = kept + rejected."""

    read: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    records: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, line: int, raw: str, why: Rejection) -> None:
        self.rejected[why.reason] += 1
        self.records.append({"line": line, "reason": why.reason, "detail": why.detail, "raw": raw[:2000]})

    def summary(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "rejected": dict(sorted(self.rejected.items()))}

    def write(self, path: Path) -> None:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records))


def json_records(path: Path, ledger: Ledger) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line, raw, object) of each JSON Lines record; lines that are not JSON objects go to the ledger."""
    for number, line in text_lines(path):
        if not line.strip():
            continue
        ledger.read += 1
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            ledger.reject(number, line, Rejection("malformed_json", str(exc)[:200]))
            continue
        if not isinstance(record, dict):
            ledger.reject(number, line, Rejection("not_an_object", type(record).__name__))
            continue
        yield number, line, record
