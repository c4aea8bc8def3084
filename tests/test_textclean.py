"""Cleaning untrusted text."""

from __future__ import annotations

from bot.textclean import clean_input, clean_name, decode_bytes, strip_controls


def test_controls_and_nul_are_stripped_newlines_and_tabs_kept() -> None:
    result = clean_input("a\x00b\x1b[2Jc\r\nd\te\x7f\x85", 1000)
    assert result.text == "ab[2Jc\nd\te"
    assert result.stripped_controls and result.cut_at is None


def test_lone_surrogates_become_replacement_characters() -> None:
    assert clean_input("x\udcffy\ud800", 100).text == "x\ufffdy\ufffd"
    assert decode_bytes(b"ok \xff\xfe!") == "ok \ufffd\ufffd!"


def test_long_text_is_cut_and_says_where() -> None:
    result = clean_input("a" * 50, 10)
    assert result.text == "a" * 10 and result.cut_at == 10


def test_names_are_one_short_line() -> None:
    assert clean_name("  Ada\n\x00Lovelace ") == "Ada Lovelace"
    assert clean_name("\x00\x01") == "friend"
    assert len(clean_name("x" * 500)) == 64


def test_output_controls_cannot_drive_a_terminal() -> None:
    assert strip_controls("hi\x1b]0;pwned\x07 there\r\n") == "hi]0;pwned there\n"
