"""Prometheus-style label selectors: `{name="v", name!="v", name=~"re", name!~"re"}`.

Semantics follow Prometheus so users can reuse what they know: a missing label equals the
empty string, regexes are fully anchored RE2 (`.` matches a newline), several matchers must all
hold. Parse errors name the column and the bad part, because the text usually comes straight from
a URL box.

Regexes run on RE2 (google-re2), not Python's `re`: a selector comes from anyone who can reach the
server, and `re` backtracks (`(a+)+$` against 30 characters took 45 s holding the GIL, so health
and ingest waited too). RE2 matches in time linear in the value and refuses what needs backtracking
(backreferences, lookaround), as Prometheus does. Patterns, their compiled size and the number of
matchers are bounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import re2

from podflame.errors import InvalidInput

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
MAX_REGEX_CHARS = 4096  # one pattern's text
MAX_REGEX_MEMORY = 1 << 20  # RE2's budget for one compiled pattern (its DFA cache included)
MAX_MATCHERS = 64  # per selector
MAX_SELECTOR_CHARS = 16384


def _re2_options() -> Any:
    options = re2.Options()
    options.dot_nl = True  # Prometheus: (?s:^(?:pattern)$)
    options.max_mem = MAX_REGEX_MEMORY
    options.log_errors = False
    return options


_OPTIONS = _re2_options()


class SelectorError(InvalidInput):
    """The selector text is invalid; the message says where and why."""


class Op(StrEnum):
    EQ = "="
    NE = "!="
    RE = "=~"
    NRE = "!~"


@dataclass(frozen=True)
class Matcher:
    name: str
    op: Op
    value: str
    regex: Any = field(default=None, compare=False, repr=False)  # a compiled re2 pattern

    def matches(self, value: str) -> bool:
        """Whether a label value (\"\" when the label is absent) satisfies this matcher."""
        if self.op is Op.EQ:
            return value == self.value
        if self.op is Op.NE:
            return value != self.value
        assert self.regex is not None
        hit = self.regex.fullmatch(value) is not None
        return hit if self.op is Op.RE else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{_quote(self.value)}"


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels.get(m.name, "")) for m in self.matchers)

    def __str__(self) -> str:
        return "{" + ", ".join(str(m) for m in self.matchers) + "}"


MATCH_ALL = Selector()


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def matcher(name: str, op: str, value: str) -> Matcher:
    """Build one matcher, compiling (and validating) its regex."""
    try:
        kind = Op(op)
    except ValueError:
        raise SelectorError(f"unknown operator {op!r} (use =, !=, =~ or !~)") from None
    regex = None
    if kind in (Op.RE, Op.NRE):
        if len(value) > MAX_REGEX_CHARS:
            raise SelectorError(f"regex for {name!r} is longer than {MAX_REGEX_CHARS} characters")
        try:
            regex = re2.compile(value, _OPTIONS)
        except re2.error as e:
            raise SelectorError(f"bad regex for {name!r}: {value[:200]!r}: {_re2_reason(e)} (RE2 syntax, as "
                                f"Prometheus; at most {MAX_REGEX_CHARS} characters)") from None
    return Matcher(name, kind, value, regex)


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", '"': '"', "'": "'"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def fail(self, what: str, at: int | None = None) -> SelectorError:
        at = self.i if at is None else at
        near = self.text[at:at + 20]
        where = f"at column {at + 1}" + (f" (near {near!r})" if near else " (end of input)")
        return SelectorError(f"bad selector {where}: {what}")

    def skip_space(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def string(self) -> str:
        quote = self.peek()
        if quote not in ('"', "'", "`"):
            raise self.fail("expected a quoted string")
        start = self.i
        self.i += 1
        out: list[str] = []
        while True:
            if self.i >= len(self.text):
                raise self.fail(f"unterminated string starting with {quote}", start)
            c = self.text[self.i]
            self.i += 1
            if c == quote:
                return "".join(out)
            if c == "\\" and quote != "`":
                out.append(self.escape())
            elif c == "\n" and quote != "`":
                raise self.fail("newline inside a quoted string", self.i - 1)
            else:
                out.append(c)

    def escape(self) -> str:
        at = self.i - 1
        c = self.peek()
        if not c:
            raise self.fail("unterminated escape sequence", at)
        self.i += 1
        if c in _ESCAPES:
            return _ESCAPES[c]
        if c in _HEX_ESCAPES:
            n = _HEX_ESCAPES[c]
            digits = self.text[self.i:self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {n} hex digits", at)
            self.i += n
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise self.fail(f"\\{c}{digits} is not a valid character", at)
            return chr(code)
        if c in "01234567":
            digits = self.text[self.i - 1:self.i + 2]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                raise self.fail("octal escapes take 3 digits, up to \\377", at)
            self.i += 2
            return chr(int(digits, 8))
        raise self.fail(f"unknown escape sequence \\{c}", at)

    def label_name(self) -> str:
        if self.peek() in ('"', "'", "`"):
            return self.string()  # quoted names, as Prometheus 3 allows (e.g. "service.name")
        m = LABEL_NAME.match(self.text, self.i)
        if not m:
            raise self.fail("expected a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        self.i = m.end()
        return m.group()

    def operator(self, name: str) -> str:
        if self.text.startswith("==", self.i):
            raise self.fail(f"use = not == after {name!r}")
        for op in ("=~", "!~", "!=", "="):
            if self.text.startswith(op, self.i):
                self.i += len(op)
                return op
        raise self.fail(f"expected =, !=, =~ or !~ after label name {name!r}")

    def parse(self) -> Selector:
        self.skip_space()
        if not self.peek():
            return MATCH_ALL
        braced = self.peek() == "{"
        if not braced and LABEL_NAME.fullmatch(self.text.strip()):
            raise self.fail("metric names are not used here: write {name=\"value\", ...}")
        if braced:
            self.i += 1
        matchers: list[Matcher] = []
        closer = "}" if braced else ""
        while True:
            self.skip_space()
            if self.peek() == closer:
                break
            if braced and not self.peek():
                raise self.fail("missing closing '}'")
            start = self.i
            name = self.label_name()
            self.skip_space()
            op = self.operator(name)
            self.skip_space()
            value = self.string()
            if len(matchers) >= MAX_MATCHERS:
                raise self.fail(f"more than {MAX_MATCHERS} matchers", start)
            try:
                matchers.append(matcher(name, op, value))
            except SelectorError as e:
                raise self.fail(str(e), start) from None
            self.skip_space()
            if self.peek() == ",":
                self.i += 1
                continue
            if self.peek() != closer:
                if braced and not self.peek():
                    raise self.fail("missing closing '}'")
                raise self.fail("expected ',' or '}'" if braced else "expected ','")
            break
        if braced:
            self.i += 1
        self.skip_space()
        if self.i != len(self.text):
            raise self.fail("unexpected text after the selector")
        return Selector(tuple(matchers))


def parse_selector(text: str | None) -> Selector:
    """Parse a selector; `None`, `""` and `{}` match everything."""
    if text is None:
        return MATCH_ALL
    if len(text) > MAX_SELECTOR_CHARS:
        raise SelectorError(f"bad selector: longer than {MAX_SELECTOR_CHARS} characters")
    return _Parser(text).parse()


def _re2_reason(e: Exception) -> str:
    """google-re2's error as text: its argument is the reason in bytes (`b'missing ): ('` read as Python)."""
    reason = e.args[0] if e.args else e
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
