"""The engine contract (runtime/contract.py): the real engine and the web tests' stand-in keep every method
of it with the same parameters, so the web tests exercise what the real engine offers."""
from __future__ import annotations

import inspect

import pytest
from fake_engine import FakeEngine

from runtime.contract import EngineContract
from runtime.engine import Engine

MEMBERS = [name for name, _ in inspect.getmembers(EngineContract) if not name.startswith("_")]


def parameters(obj, name: str) -> list[tuple[str, object]]:
    """(name, default) of each parameter of a method, or [("property", None)] for a property."""
    member = inspect.getattr_static(obj, name)
    if isinstance(member, property):
        return [("property", None)]
    return [(p.name, p.default) for p in inspect.signature(member).parameters.values()]


def test_the_contract_has_the_methods_the_web_layer_uses():
    assert {"start", "ready", "info", "chat", "describe", "ground", "prepare", "prepare_status",
            "prepared_image", "cancel_prepare"} == set(MEMBERS)


@pytest.mark.parametrize("implementation", [Engine, FakeEngine], ids=["Engine", "FakeEngine"])
@pytest.mark.parametrize("name", MEMBERS)
def test_implementations_keep_the_contract(implementation, name):
    assert hasattr(implementation, name), f"{implementation.__name__} lacks {name}"
    assert parameters(implementation, name) == parameters(EngineContract, name)
