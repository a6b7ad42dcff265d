"""The connection's writer: a whole answer's head and body leave in one send; anything else as written."""
from __future__ import annotations

from edgerules.gateway.http import _HeadWithBody


class Transport:
    def __init__(self):
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data):
        self.sends.append(bytes(data))

    def writelines(self, parts):
        self.sends.append(b"".join(parts))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


def test_a_held_head_leaves_with_its_body_in_one_send():
    t = Transport()
    w = _HeadWithBody(t)
    w.hold()
    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert t.sends == []
    w.write(b"{}")
    assert t.sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    w.write(b"next")   # holding ends with the body: later writes go straight out
    assert t.sends[-1] == b"next" and len(t.sends) == 2


def test_without_hold_every_write_goes_out_at_once_and_other_calls_pass_through():
    t = Transport()
    w = _HeadWithBody(t)
    w.write(b"head")
    w.write(b"event")
    assert t.sends == [b"head", b"event"]
    assert w.get_extra_info("peername") == ("127.0.0.1", 1)


def test_a_head_whose_body_never_comes_is_sent_by_flush_and_by_close():
    t = Transport()
    w = _HeadWithBody(t)
    w.hold()
    w.write(b"head")
    w.flush()
    assert t.sends == [b"head"]
    w.write(b"after")
    assert t.sends == [b"head", b"after"]
    w.hold()
    w.write(b"head2")
    w.close()
    assert t.sends[-1] == b"head2" and t.closed
