"""The test harness's own promises that the other tests rely on."""
from conftest import free_port


def test_free_port_never_gives_the_same_port_twice():
    """A port is bound only when tern starts, later: two listeners of one tern must not get
    the same one (the kernel offers a port just released again: 2,000 bare bind(0) calls
    here saw 132 repeats)."""
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
