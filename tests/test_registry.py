"""The registry helper and `ddkit list`: every registry is populated and lookups fail helpfully."""

import pytest

from ddkit.errors import DdkitError
from ddkit.registries import all_registries
from ddkit.registry import Registry


def test_register_get_and_list():
    reg = Registry("thing")

    @reg.register("alpha", summary="first", family="a")
    def alpha():
        return 1

    reg.register("beta")(lambda: 2)
    assert reg.create("alpha") == 1
    assert reg.names() == ["alpha", "beta"]
    assert reg.names("a*") == ["alpha"]
    assert reg.names(family="a") == ["alpha"]
    assert "beta" in reg and len(reg) == 2


def test_duplicate_name_is_an_error():
    reg = Registry("thing")
    reg.register("x")(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("x")(lambda: 2)


def test_list_offers_every_registry():
    from ddkit.cli.listing import list_cmd

    assert set(list_cmd.params[0].type.choices) == set(all_registries())


def test_unknown_name_suggests_close_match():
    reg = Registry("model")
    reg.register("convnet")(lambda: 1)
    with pytest.raises(DdkitError, match="did you mean convnet"):
        reg.get("convnt")


@pytest.mark.parametrize("kind", sorted(all_registries()))
def test_every_registry_is_populated(kind):
    registry = all_registries()[kind]
    assert len(registry) > 0
    for entry in registry.entries():
        assert entry.summary, f"{kind} {entry.name} has no summary"
