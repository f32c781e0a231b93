"""Terminal output: progress as a bar on a terminal and as plain lines elsewhere."""

from __future__ import annotations

from npubuild import terminal


def test_progress_draws_a_bar_on_a_terminal_and_plain_lines_elsewhere(monkeypatch, capsys):
    lines = []
    with terminal.say_through(lines.append):
        monkeypatch.setattr(terminal, "on_terminal", lambda: True)
        bar = terminal.Progress(4, "clips", every_s=0.0)
        for _ in range(4):
            bar.advance()
        drawn = capsys.readouterr().err
        monkeypatch.setattr(terminal, "on_terminal", lambda: False)
        plain = terminal.Progress(4, "clips", every_s=0.0)
        for _ in range(4):
            plain.advance()
    assert "  clips:" in drawn and "%|" in drawn  # tqdm's bar on standard error
    assert lines[0].startswith("  clips: 4/4 in ")  # the bar leaves one line in the log
    assert lines[1:4] == ["  clips: 1/4, about 0 s left", "  clips: 2/4, about 0 s left",
                          "  clips: 3/4, about 0 s left"] and lines[4].startswith("  clips: 4/4 in ")


def test_on_terminal_is_false_when_plain_is_asked(monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("NPUBUILD_PLAIN", "1")
    assert not terminal.on_terminal()
    monkeypatch.delenv("NPUBUILD_PLAIN")
    assert terminal.on_terminal()
