"""What a virtual user decides by itself (``wacall.users.behaviour``): pure functions of its settings."""

from __future__ import annotations

import ast
import inspect

import pytest

from wacall.domain.model import User
from wacall.users import behaviour
from wacall.users.behaviour import Reaction, voice, when_asked_permission, when_called


def user(**fields) -> User:
    return User(wa_id="447700900001", name="Ann", country="GB", **fields)


@pytest.mark.parametrize("incoming, answer_after, expected", [
    ("answer", 2.0, Reaction("answer", 2.0)),
    ("reject", 0.5, Reaction("reject", 0.5)),
    ("answer", -3.0, Reaction("answer", 0.0)),         # never in the past
    ("ignore", 2.0, None),                             # rings until Meta's ring timeout
    ("manual", 2.0, None),                             # someone answers through the control API
])
def test_when_the_business_calls(incoming, answer_after, expected):
    assert when_called(user(incoming=incoming, answer_after=answer_after)) == expected


@pytest.mark.parametrize("choice, expected", [
    ("accept", Reaction("accept", 1.0)),
    ("accept_permanent", Reaction("accept_permanent", 1.0)),
    ("reject", Reaction("reject", 1.0)),
    ("ignore", None),
    ("manual", None),
])
def test_when_asked_for_call_permission(choice, expected):
    assert when_asked_permission(user(permission_requests=choice, reply_after=1.0)) == expected


def test_what_the_user_says():
    assert voice(user(audio="tone:880")) == "tone:880"
    assert voice(user()) == "tone:440"
    assert voice(None) == "silence"


def test_behaviour_imports_nothing_from_wacall():
    """The domain asks these questions: the module must not bring any other layer along."""
    tree = ast.parse(inspect.getsource(behaviour))
    assert all(node.level == 0 and not (node.module or "").startswith("wacall")
               for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))
    assert all(not alias.name.startswith("wacall")
               for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names)
