"""The delivery sensors' cursors: what they write reads back; anything else is a clear skip."""

from __future__ import annotations

import pytest

from sensors import git_push, registry_images
from sensors.cursors import CursorError


def test_the_git_cursor_reads_back_and_refuses_other_shapes():
    assert git_push.read_cursor(None) == git_push.Cursor() == git_push.read_cursor("")
    cursor = git_push.Cursor(asked={"hello": "abc"}, seen={"hello": "def", "hi": "123"})
    assert git_push.read_cursor(cursor.dump()) == cursor
    # written before a head waited a tick: the shas asked for
    assert git_push.read_cursor('{"hello": "abc"}') == git_push.Cursor(asked={"hello": "abc"})
    with pytest.raises(CursorError, match=r"not JSON .*reset it in the UI"):
        git_push.read_cursor("{hello")
    shape = r'not \{"asked": \{"<app>": "<sha>"\}, "seen": \{"<app>": "<sha>"\}\}; reset it'
    for broken in ('{"hello": {"main": "abc"}}', '{"asked": {"hello": 3}}', '["hello"]'):
        with pytest.raises(CursorError, match=shape):
            git_push.read_cursor(broken)


def test_the_registry_cursor_reads_back_and_refuses_other_shapes():
    text = '{"hello": {"main": "sha256:ab"}}'
    assert registry_images.read_cursor(text) == {"hello": {"main": "sha256:ab"}}
    for broken in ('["hello"]', '{"hello": "sha256:ab"}', '{"hello": {"main": 3}}'):
        with pytest.raises(CursorError, match=r'\{"<app>": \{"<tag>": "<digest>"\}\}'):
            registry_images.read_cursor(broken)
