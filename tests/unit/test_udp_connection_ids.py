"""The QUIC connection-ID index of a UDP listener: which datagrams it routes, that it holds
no more than the sessions' IDs, and that a migrated session changes address in the table."""

from __future__ import annotations

from vane.net.udp import ConnectionIds, UdpSession

CID = bytes(range(8))


def table() -> tuple[dict, ConnectionIds, UdpSession]:
    sessions: dict = {}
    ids = ConnectionIds(sessions)
    s = UdpSession(("127.0.0.1", 1000), None, b"", ids=ids)
    sessions[s.client] = s
    return sessions, ids, s


def test_only_a_short_header_with_fixed_bit_and_a_whole_id_is_routed():
    _, ids, s = table()
    ids.add(s, CID)
    assert ids.session_of(b"\x41" + CID + b"payload") is s
    assert ids.session_of(b"\xc1" + CID + b"payload") is None     # long header: by address
    assert ids.session_of(b"\x01" + CID + b"payload") is None     # no fixed bit: not QUIC v1
    assert ids.session_of(b"\x41" + CID[:7]) is None               # too short for an ID
    assert ids.session_of(b"\x41" + bytes(8) + b"x") is None       # an ID nobody issued
    s.closed = True
    assert ids.session_of(b"\x41" + CID + b"payload") is None      # a session that ended


def test_ids_leave_with_their_session_and_a_foreign_one_is_not_taken():
    sessions, ids, s = table()
    other = UdpSession(("127.0.0.1", 2000), None, b"", ids=ids)
    ids.add(s, CID)
    ids.add(other, CID)                 # already another session's: stays with the first
    ids.add(s, b"short")                # not this daemon's ID length: never indexed
    ids.add(s, bytes(8))
    assert ids.by_id == {CID: s, bytes(8): s}
    ids.remove(other, CID)
    assert CID in ids.by_id
    ids.remove(s, bytes(8))
    assert s.cids == [CID]
    ids.drop(s)
    assert ids.by_id == {} and s.cids == []


def test_move_rekeys_the_session_and_frees_the_old_address():
    sessions, ids, s = table()
    ids.move(s, ("127.0.0.1", 1001))
    assert sessions == {("127.0.0.1", 1001): s} and s.client == ("127.0.0.1", 1001)
    squatter = UdpSession(("127.0.0.1", 1002), None, b"", ids=ids)
    sessions[squatter.client] = squatter
    ids.move(s, ("127.0.0.1", 1002))    # an address another session holds stays that one's
    assert sessions == {("127.0.0.1", 1002): squatter}


def test_reset_tokens_are_per_id_and_stable():
    assert ConnectionIds.reset_token(CID) == ConnectionIds.reset_token(CID)
    assert ConnectionIds.reset_token(CID) != ConnectionIds.reset_token(bytes(8))
    assert len(ConnectionIds.reset_token(CID)) == 16


def test_issued_ids_name_their_worker_when_the_kernel_steers():
    _, ids, _ = table()
    assert len(ids.new_id()) == 8 and ids.new_id() != ids.new_id()
    for worker, workers in ((0, 2), (1, 2), (2, 3), (4, 5)):
        ids.steer = (worker, workers)
        assert all(ids.new_id()[0] % workers == worker for _ in range(300))
