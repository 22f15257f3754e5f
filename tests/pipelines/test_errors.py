"""pipelines.errors: the one-line rendering of a foreign error inside our messages."""

from __future__ import annotations

import pytest

from pipelines.errors import one_line


def test_a_multi_line_message_becomes_one_line():
    assert one_line(ValueError("bad value\n  in line 2\tand 3")) == "bad value in line 2 and 3"


def test_the_type_name_leads_when_asked_and_stands_alone_for_an_empty_message():
    assert one_line(OSError("disk full"), with_type=True) == "OSError: disk full"
    assert one_line(KeyError(), with_type=True) == "KeyError"
    assert one_line(RuntimeError("")) == "RuntimeError"


def test_limit_cuts_the_rendered_text():
    assert one_line(ValueError("x" * 50), with_type=True, limit=14) == "ValueError: xx"
    with pytest.raises(ValueError, match="limit"):
        one_line(ValueError("x"), limit=-1)
