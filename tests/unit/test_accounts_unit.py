"""Pure pieces of the account service: email and display-name normalisation (I3, E3)."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidArgument
from gateway.services.accounts import MAX_EMAIL_CHARS, normalize_email, normalize_name


@pytest.mark.parametrize(
    ("raw", "typed", "norm"),
    [
        ("a@x.com", "a@x.com", "a@x.com"),
        ("A@X.COM", "A@X.COM", "a@x.com"),
        ("  Mixed.Case@Example.Org \t", "Mixed.Case@Example.Org", "mixed.case@example.org"),
        ("Ａ@ｘ.com", "Ａ@ｘ.com", "a@x.com"),  # fullwidth letters: NFKC
        ("\ufb01le@x.com", "\ufb01le@x.com", "file@x.com"),  # the "ﬁ" ligature
        ("Straße@x.com", "Straße@x.com", "strasse@x.com"),  # full case folding, not lower()
        ("ÉCOLE@x.fr", "ÉCOLE@x.fr", "école@x.fr"),
        ("user+tag@sub.example.co.uk", "user+tag@sub.example.co.uk", "user+tag@sub.example.co.uk"),
    ],
)
def test_normalize_email_keeps_what_was_typed_and_folds_the_key(raw: str, typed: str,
                                                                 norm: str) -> None:
    assert normalize_email(raw) == (typed, norm)


def test_case_and_width_variants_share_one_key() -> None:
    variants = ["A@x.com", "a@X.COM", "A@X.com", " a@x.com ", "Ａ@x.com", "a@ｘ.ＣＯＭ"]
    assert {normalize_email(v)[1] for v in variants} == {"a@x.com"}


@pytest.mark.parametrize(
    "raw",
    [
        '"Bob" <victim@evil.com>',  # a display name: mail would go to victim@evil.com
        "x,victim@evil.com",  # a recipient list
        "a(comment)@x.com",
        "a;b@x.com",
        "",
        "   ",
        "plain",
        "@x.com",
        "a@",
        "a@x",  # no dot in the domain
        "a@.x.com",
        "a@x.com.",
        "a b@x.com",
        "a@x .com",
        "a\u3000b@x.com",  # ideographic space
        "a@@x.com",
        "a@b@x.com",
        "a\x00@x.com",  # NUL
        "a\x7f@x.com",
        "a@x.com\u200b",  # zero-width space: a look-alike of a@x.com
        "a\u202e@x.com",  # right-to-left override
        "a" * MAX_EMAIL_CHARS + "@x.com",
    ],
)
def test_normalize_email_refuses_what_is_not_an_address(raw: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        normalize_email(raw)
    assert info.value.message == "email: not a valid address"


def test_normalize_email_length_limit_is_inclusive() -> None:
    domain = "@x.com"
    longest = "a" * (MAX_EMAIL_CHARS - len(domain)) + domain
    assert normalize_email(longest)[1] == longest
    with pytest.raises(InvalidArgument):
        normalize_email("a" + longest)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("Ada", "Ada"),
        ("  Ada   Lovelace  ", "Ada Lovelace"),
        ("a\tb\nc", "a b c"),  # any whitespace run becomes one space
        ("\u3000Ada\u3000", "Ada"),
        ("Ａｄａ", "Ada"),  # NFKC
        ("Zoë 🚀", "Zoë 🚀"),
    ],
)
def test_normalize_name(raw: str, name: str) -> None:
    assert normalize_name(raw, 64) == name


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("", "must not be empty"),
        (" \t\n ", "must not be empty"),
        ("x" * 65, "at most 64"),
        ("bad\x00name", "control characters"),
        ("bad\u200bname", "control characters"),  # zero-width space (format)
        ("evil\u202ename", "control characters"),  # bidi override
        ("private\ue000use", "control characters"),
    ],
)
def test_normalize_name_refusals(raw: str, needle: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        normalize_name(raw, 64)
    assert needle in info.value.message
    assert info.value.message.startswith("name: ")


def test_normalize_name_counts_after_normalising() -> None:
    assert normalize_name("x" * 64, 64) == "x" * 64
    # Whitespace that collapses does not count against the limit.
    assert normalize_name("  " + "x" * 32 + "     " + "y" * 31 + "  ", 64) == \
        "x" * 32 + " " + "y" * 31
    # NFKC can lengthen: the limit applies to what is stored.
    with pytest.raises(InvalidArgument):
        normalize_name("\ufdfa", 10)  # one code point, 18 after NFKC
