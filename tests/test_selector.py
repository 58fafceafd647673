"""Selector parsing and matching follow Prometheus: missing label == "", anchored regexes."""

from __future__ import annotations

import pytest

from web.store.selector import MATCH_ALL, Op, SelectorError, parse_selector

LABELS = {"namespace": "shop", "pod": "cart-7d9f", "container": "app", "comm": 'say "hi"'}


@pytest.mark.parametrize("text", [None, "", "  ", "{}", "{ }"])
def test_empty_selectors_match_everything(text: str | None) -> None:
    assert parse_selector(text) == MATCH_ALL
    assert parse_selector(text).matches({}) and parse_selector(text).matches(LABELS)


@pytest.mark.parametrize("text, expected", [
    ('{namespace="shop"}', True),
    ('{namespace="shop", pod!="cart-7d9f"}', False),
    ('{pod=~"cart-.*"}', True),
    ('{pod=~"cart"}', False),  # anchored: a substring is not a match
    ('{pod=~"art-7d9"}', False),
    ('{pod!~"cart-.*"}', False),
    ('{pod!~"api-.*"}', True),
    ('{missing=""}', True),  # absent label equals the empty string
    ('{missing!=""}', False),
    ('{missing=~".*"}', True),
    ('{missing=~".+"}', False),
    ('{namespace!=""}', True),
    ('{comm="say \\"hi\\""}', True),
    ("{comm='say \"hi\"'}", True),
    ('{comm=`say "hi"`}', True),
    ('{namespace="shop",}', True),  # trailing comma, as Prometheus allows
    ('namespace="shop"', True),  # braces may be left out
    ('{namespace="shop", namespace=~"sh.*"}', True),
    ('{"namespace"="shop"}', True),  # quoted label name
    ('{pod=~"CART-.*"}', False),  # case-sensitive
    ('{pod=~"(?i)CART-.*"}', True),
])
def test_matching(text: str, expected: bool) -> None:
    assert parse_selector(text).matches(LABELS) is expected


def test_parsed_matchers() -> None:
    sel = parse_selector('{ a = "1" , b!="2", c=~"x|y", d !~ "z" }')
    assert [(m.name, m.op, m.value) for m in sel.matchers] == [
        ("a", Op.EQ, "1"), ("b", Op.NE, "2"), ("c", Op.RE, "x|y"), ("d", Op.NRE, "z")]


@pytest.mark.parametrize("escaped, value", [
    (r'"a\\b"', "a\\b"), (r'"tab\there"', "tab\there"), (r'"nl\n"', "nl\n"), (r'"\x41\u00e9\U0001F600"', "Aé😀"),
    (r'"\101"', "A"), (r"'it\'s'", "it's"), (r"`raw\n`", r"raw\n"), ('"ünïcode"', "ünïcode"),
])
def test_string_escapes(escaped: str, value: str) -> None:
    (m,) = parse_selector("{x=" + escaped + "}").matchers
    assert m.value == value


@pytest.mark.parametrize("text, message", [
    ('{pod="x"', "missing closing '}'"),
    ('{pod="x" namespace="y"}', "expected ',' or '}'"),
    ("{pod=x}", "expected a quoted string"),
    ('{pod=="x"}', "use = not =="),
    ('{pod~"x"}', "expected =, !=, =~ or !~ after label name 'pod'"),
    ('{1pod="x"}', "expected a label name"),
    ('{pod="x}', "unterminated string"),
    (r'{pod="\q"}', r"unknown escape sequence \q"),
    (r'{pod="\x4"}', r"\x needs 2 hex digits"),
    ('{pod=~"("}', "bad regex for 'pod'"),
    ('{pod="x"} extra', "unexpected text after the selector"),
    ("cpu_seconds", "metric names are not used here"),
])
def test_errors_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match="bad selector at column") as e:
        parse_selector(text)
    assert message in str(e.value)


def test_error_column_points_at_the_problem() -> None:
    with pytest.raises(SelectorError, match=r"column 10 \(near 'x}'\)"):
        parse_selector('{a="1",b=x}')


def test_str_round_trips() -> None:
    sel = parse_selector('{a="q\\"uote", b=~"x.*"}')
    assert parse_selector(str(sel)) == sel


def test_a_bad_regex_says_re2s_reason_as_text() -> None:
    """google-re2 gives its reason as bytes: the 400 read `b'missing ): ('`."""
    with pytest.raises(SelectorError) as e:
        parse_selector('{pod=~"("}')
    assert "'(': missing ): ( (RE2 syntax" in str(e.value) and "b'" not in str(e.value)
