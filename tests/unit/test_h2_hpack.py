"""HPACK of the HTTP/2 server (vane.net.h2.compression) against the ``hpack`` library's encoder
and decoder: the peers vane meets encode and decode the same way, and hostile blocks fail as
a compression error instead of corrupting the table or the process."""

from __future__ import annotations

import os
import random

import hpack
import pytest

from vane.net.h2.compression import CompressionError, Decoder, Encoder, HeaderListTooLarge


def _fields(rnd: random.Random) -> list[tuple[bytes, bytes]]:
    out = [(b":status", rnd.choice([b"200", b"404", b"302", b"599"]))]
    for _ in range(rnd.randint(0, 12)):
        name = rnd.choice([b"content-type", b"x-a", b"x-" + str(rnd.randint(0, 60)).encode(), b"set-cookie",
                           b"date", b"server", b"cookie", b"authorization"])
        value = rnd.choice([b"", b"text/plain", os.urandom(rnd.randint(0, 12)).hex().encode(),
                            b"v" * rnd.randint(0, 700)])
        out.append((name, value))
    return out


def test_decoder_follows_the_hpack_library_encoder():
    rnd = random.Random(7)
    peer = hpack.Encoder()
    ours = Decoder(1 << 20)
    for i in range(3000):
        if i % 400 == 11:       # the peer shrinks and grows its table: size updates in the block
            peer.header_table_size = rnd.choice([0, 100, 1000, 4096])
        fields = _fields(rnd)
        assert ours.decode(peer.encode(fields, huffman=rnd.random() < 0.5)) == fields


def test_encoder_is_understood_by_the_hpack_library_decoder():
    rnd = random.Random(11)
    ours = Encoder()
    peer = hpack.Decoder()
    peer.max_header_list_size = 1 << 20
    for i in range(3000):
        if i % 500 == 3:        # the peer's SETTINGS_HEADER_TABLE_SIZE changes
            size = rnd.choice([0, 50, 2000, 4096, 8192])
            ours.set_max_table_size(size)
            peer.header_table_size = min(size, 4096)
        fields = _fields(rnd)
        assert [(bytes(n), bytes(v)) for n, v in peer.decode(ours.encode(fields), raw=True)] == fields


def test_encoder_indexes_repeated_fields():
    ours = Encoder()
    fields = [(b":status", b"200"), (b"server", b"vane"), (b"x-request", b"abc")]
    first = ours.encode(fields)
    again = ours.encode(fields)
    assert len(again) == 3 and len(again) < len(first)   # one byte per field once indexed


def test_private_fields_are_never_indexed():
    ours = Encoder()
    block = ours.encode([(b"authorization", b"Bearer secret")])
    assert block[0] & 0xF0 == 0x10                      # literal never indexed
    assert ours.encode([(b"authorization", b"Bearer secret")]) == block


@pytest.mark.parametrize("block", [
    b"\x80",                            # index 0
    b"\xff\x80\x80\x80\x80\x80\x01",    # an integer past five continuation bytes
    b"\xff",                            # truncated integer
    b"\xbe",                            # dynamic index 62 with an empty table
    b"\x40\x05abc",                     # literal name longer than the block
    b"\x40\x01a\x85\xff\xff",           # Huffman string that is cut / invalid
    b"\x3f\xe2\x1f",                    # table size update to 4097
    b"\x82\x20",                        # table size update after a field
], ids=["index-0", "long-int", "cut-int", "empty-dynamic", "cut-string", "bad-huffman", "big-size-update",
        "late-size-update"])
def test_malformed_blocks_are_compression_errors(block):
    with pytest.raises(CompressionError):
        Decoder(65536).decode(block)


def test_header_list_past_the_limit():
    peer = hpack.Encoder()
    block = peer.encode([(b"x-big", b"v" * 5000)])
    with pytest.raises(HeaderListTooLarge):
        Decoder(4096).decode(block)
    assert Decoder(8192).decode(block) == [(b"x-big", b"v" * 5000)]


def test_indexed_fields_cannot_inflate_past_the_limit():
    # one literal in the table, then the same one-byte index many times: 4 KiB limit holds
    peer = hpack.Encoder()
    first = peer.encode([(b"x-a", b"v" * 100)])
    ours = Decoder(4096)
    ours.decode(first)
    with pytest.raises(HeaderListTooLarge):
        ours.decode(b"\xbe" * 100)


def test_a_list_past_the_limit_keeps_the_table_in_step():
    # the peer indexes fields of the block that is too large; its next block refers to them
    peer = hpack.Encoder()
    ours = Decoder(2048)
    big = [(b"x-a%d" % i, b"v" * 300) for i in range(10)]
    with pytest.raises(HeaderListTooLarge):
        ours.decode(peer.encode(big))
    again = [(b"x-a8", b"v" * 300), (b"x-a9", b"v" * 300)]
    block = peer.encode(again)
    assert len(block) < 10                        # two indexes into the dynamic table
    assert ours.decode(block) == again
