import pytest

from orchestrator.errors import ConfigError
from orchestrator.ids import NodeId, Ref


@pytest.mark.parametrize(
    ("text", "base", "index"),
    [("fanout[3]", "fanout", 3), ("fanout[0]", "fanout", 0), ("plain", "plain", None)],
)
def test_node_id_round_trips(text: str, base: str, index: int | None) -> None:
    node = NodeId.parse(text)
    assert (node.base, node.index) == (base, index)
    assert str(node) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[3]",
        "fanout[",
        "fanout[]",
        "fanout[x]",
        "fanout[-1]",
        "fanout[03]",
        "a[1]x",
        "a[1][2]",
        "a[²]",
    ],
)
def test_bad_node_id_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="NAME"):
        NodeId.parse(text)


def test_ref_round_trips() -> None:
    assert str(Ref.parse("fanout.result")) == "fanout.result"
