"""The CLI's bad-input contract, asserted one way by every test that checks it."""

from __future__ import annotations


def assert_one_line_error(code: int, out: str, err: str, text: str, code_expected: int = 1) -> list[str]:
    """Exit ``code_expected``; stderr is one ``error:`` line containing ``text``, at most one
    ``hint:`` line after it; no traceback in either stream. Returns stderr's non-blank lines."""
    assert code == code_expected, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), err
    assert text in lines[0], lines[0]
    assert len(lines) <= 2 and all(line.startswith(("error:", "hint:")) for line in lines), err
    assert "Traceback" not in out + err
    return lines
