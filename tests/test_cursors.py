"""The delivery sensors' cursors: what they write reads back; anything else is a clear skip."""

from __future__ import annotations

import pytest

from sensors import git_push, registry_images
from sensors.cursors import CursorError


def test_the_git_cursor_reads_back_and_refuses_other_shapes():
    assert git_push.read_cursor(None) == {} and git_push.read_cursor("") == {}
    assert git_push.read_cursor('{"hello": "abc"}') == {"hello": "abc"}
    with pytest.raises(CursorError, match=r"not JSON .*reset it in the UI"):
        git_push.read_cursor("{hello")
    with pytest.raises(CursorError, match=r'not \{"<app>": "<sha>"\}; reset it in the UI'):
        git_push.read_cursor('{"hello": {"main": "abc"}}')


def test_the_registry_cursor_reads_back_and_refuses_other_shapes():
    text = '{"hello": {"main": "sha256:ab"}}'
    assert registry_images.read_cursor(text) == {"hello": {"main": "sha256:ab"}}
    for broken in ('["hello"]', '{"hello": "sha256:ab"}', '{"hello": {"main": 3}}'):
        with pytest.raises(CursorError, match=r'\{"<app>": \{"<tag>": "<digest>"\}\}'):
            registry_images.read_cursor(broken)
