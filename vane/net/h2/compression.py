"""HPACK (RFC 7541) for the HTTP/2 server: the request-block decoder and the response encoder.

``Decoder.decode`` turns a header block into ``(name, value)`` byte pairs, keeping the dynamic
table in step with the peer's encoder; any malformed block raises ``CompressionError`` (a
connection error: the table can no longer be trusted) and a decoded list past
``max_header_list_size`` raises ``HeaderListTooLarge`` once the whole block is decoded (the
fields past the limit are dropped as they come, the table is kept in step, so the
connection may go on). ``Encoder.encode`` writes fields as
static or dynamic table indexes when it can and otherwise as literals (indexed for the next
block unless the value is large or private); it never fails half-way, so the peer's table
always matches ours. Huffman coding is decoded (through ``hpack``'s table) but not produced:
literals go out raw, which every decoder accepts.
"""

from __future__ import annotations

from collections import deque

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["CompressionError", "Decoder", "Encoder", "HeaderListTooLarge"]

HeaderList = list[tuple[bytes, bytes]]

STATIC: tuple[tuple[bytes, bytes], ...] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_COUNT = len(STATIC)                     # 61
_STATIC_PAIR: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(STATIC, 1):
    _STATIC_PAIR.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)

DEFAULT_TABLE_SIZE = 4096
_ENTRY_OVERHEAD = 32
_MAX_INT_BYTES = 5              # an HPACK integer this long is already > 2^28
_INDEX_MAX_VALUE = 256          # longer values are sent without indexing: they would churn the table
_PRIVATE = frozenset({b"authorization", b"proxy-authorization", b"set-cookie", b"cookie"})
_HUFFMAN_CACHE_MAX = 512        # decoded Huffman strings kept (short ones only), process-wide
_HUFFMAN_CACHE_LEN = 64
_huffman_cache: dict[bytes, bytes] = {}


class CompressionError(Exception):
    """The header block cannot be decoded (COMPRESSION_ERROR)."""


class HeaderListTooLarge(CompressionError):
    """The decoded header list is past the advertised SETTINGS_MAX_HEADER_LIST_SIZE."""


def _huffman(raw: bytes) -> bytes:
    text = _huffman_cache.get(raw)
    if text is None:
        try:
            text = decode_huffman(raw)
        except HPACKDecodingError:
            raise CompressionError("invalid Huffman string") from None
        if len(raw) <= _HUFFMAN_CACHE_LEN and len(_huffman_cache) < _HUFFMAN_CACHE_MAX:
            _huffman_cache[raw] = text
    return text


class Decoder:
    """The decoding side of one connection's HPACK context (the peer encodes)."""

    __slots__ = ("_table", "_size", "_limit", "max_table_size", "max_header_list_size")

    def __init__(self, max_header_list_size: int) -> None:
        self._table: deque[tuple[bytes, bytes]] = deque()    # newest first
        self._size = 0
        self.max_table_size = DEFAULT_TABLE_SIZE  # what we allow (SETTINGS_HEADER_TABLE_SIZE)
        self._limit = DEFAULT_TABLE_SIZE          # what the peer's encoder chose (size updates)
        self.max_header_list_size = max_header_list_size

    def decode(self, block: bytes) -> HeaderList:
        out: HeaderList = []
        table = self._table
        n = len(block)
        pos = 0
        total = 0
        limit = self.max_header_list_size
        first = True
        keep = True
        while pos < n:
            b = block[pos]
            if b & 0x80:                                            # indexed field
                index = b & 0x7F
                pos += 1
                if index == 0x7F:
                    index, pos = _integer(block, pos, 0x7F)
                if index <= _STATIC_COUNT:
                    if index == 0:
                        raise CompressionError("index 0")
                    field = STATIC[index - 1]
                else:
                    try:
                        field = table[index - _STATIC_COUNT - 1]
                    except IndexError:
                        raise CompressionError(f"index {index} past the table") from None
            elif b & 0xE0 == 0x20:                                  # dynamic table size update
                if not first:
                    raise CompressionError("table size update after the first field")
                size = b & 0x1F
                pos += 1
                if size == 0x1F:
                    size, pos = _integer(block, pos, 0x1F)
                if size > self.max_table_size:
                    raise CompressionError(f"table size {size} past the allowed {self.max_table_size}")
                self._resize(size)
                continue
            else:
                if b & 0x40:                                        # literal, incremental indexing
                    prefix = 0x3F
                    index = b & 0x3F
                else:                                               # literal, not / never indexed
                    prefix = 0x0F
                    index = b & 0x0F
                pos += 1
                if index == prefix:
                    index, pos = _integer(block, pos, prefix)
                if index:
                    if index <= _STATIC_COUNT:
                        name = STATIC[index - 1][0]
                    else:
                        try:
                            name = table[index - _STATIC_COUNT - 1][0]
                        except IndexError:
                            raise CompressionError(f"index {index} past the table") from None
                else:
                    name, pos = _string(block, pos)
                value, pos = _string(block, pos)
                field = (name, value)
                if b & 0x40:
                    self._add(field)
            first = False
            if keep:
                total += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
                if total > limit:
                    keep = False
                    out.clear()
                else:
                    out.append(field)
        if not keep:
            raise HeaderListTooLarge(f"header list past {limit} bytes")
        return out

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        table = self._table
        if size > self._limit:
            table.clear()
            self._size = 0
            return
        self._size += size
        table.appendleft(field)
        while self._size > self._limit:
            old = table.pop()
            self._size -= len(old[0]) + len(old[1]) + _ENTRY_OVERHEAD

    def _resize(self, size: int) -> None:
        self._limit = size
        table = self._table
        while self._size > size:
            old = table.pop()
            self._size -= len(old[0]) + len(old[1]) + _ENTRY_OVERHEAD


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """The rest of an integer whose prefix bits were all ones; returns (value, next pos)."""
    value = prefix
    shift = 0
    n = len(block)
    for _ in range(_MAX_INT_BYTES):
        if pos >= n:
            raise CompressionError("truncated integer")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    raise CompressionError("integer too long")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise CompressionError("truncated string")
    b = block[pos]
    length = b & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer(block, pos, 0x7F)
    end = pos + length
    if end > len(block):
        raise CompressionError("truncated string")
    raw = block[pos:end]
    return (_huffman(raw) if b & 0x80 else raw), end


class Encoder:
    """The encoding side of one connection's HPACK context (the peer decodes).

    The dynamic table is a list of entries with increasing sequence numbers; a field's index
    is its distance from the newest. ``max_table_size`` follows the peer's
    SETTINGS_HEADER_TABLE_SIZE (at most 4096); a reduction is announced at the start of the
    next block.
    """

    __slots__ = ("_entries", "_pairs", "_names", "_seq", "_size", "_max", "_announce")

    def __init__(self) -> None:
        self._entries: deque[tuple[int, bytes, bytes]] = deque()    # oldest first
        self._pairs: dict[tuple[bytes, bytes], int] = {}
        self._names: dict[bytes, int] = {}
        self._seq = 0            # sequence number the next entry gets
        self._size = 0
        self._max = DEFAULT_TABLE_SIZE
        self._announce: int | None = None

    def set_max_table_size(self, size: int) -> None:
        size = min(size, DEFAULT_TABLE_SIZE)
        if size != self._max:
            self._max = size
            self._evict()
            self._announce = size if self._announce is None else min(self._announce, size)

    def encode(self, fields: HeaderList) -> bytes:
        out = bytearray()
        if self._announce is not None:
            _put_int(out, 0x20, 0x1F, self._announce)
            if self._announce != self._max:
                _put_int(out, 0x20, 0x1F, self._max)
            self._announce = None
        pairs = self._pairs
        for field in fields:
            static = _STATIC_PAIR.get(field)
            if static is not None:
                if static < 0x7F:
                    out.append(0x80 | static)
                else:
                    _put_int(out, 0x80, 0x7F, static)
                continue
            seq = pairs.get(field)
            if seq is not None:
                _put_int(out, 0x80, 0x7F, self._seq - seq + _STATIC_COUNT)
                continue
            name, value = field
            index = _STATIC_NAME.get(name)
            if index is None:
                seq = self._names.get(name)
                if seq is not None:
                    index = self._seq - seq + _STATIC_COUNT
            if len(value) > _INDEX_MAX_VALUE or name in _PRIVATE:
                if name in _PRIVATE and name != b"cookie":
                    _put_int(out, 0x10, 0x0F, index or 0)          # never indexed
                else:
                    _put_int(out, 0x00, 0x0F, index or 0)          # not indexed
            else:
                _put_int(out, 0x40, 0x3F, index or 0)              # incremental indexing
                self._add(name, value)
            if not index:
                _put_int(out, 0x00, 0x7F, len(name))
                out += name
            _put_int(out, 0x00, 0x7F, len(value))
            out += value
        return bytes(out)

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        seq = self._seq
        self._seq = seq + 1
        if size > self._max:          # the peer empties its table: so do we
            self._entries.clear()
            self._pairs.clear()
            self._names.clear()
            self._size = 0
            return
        self._entries.append((seq, name, value))
        self._pairs[(name, value)] = seq
        self._names[name] = seq
        self._size += size
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while self._size > self._max:
            seq, name, value = entries.popleft()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD
            if self._pairs.get((name, value)) == seq:
                del self._pairs[(name, value)]
            if self._names.get(name) == seq:
                del self._names[name]


def _put_int(out: bytearray, flags: int, prefix: int, value: int) -> None:
    if value < prefix:
        out.append(flags | value)
        return
    out.append(flags | prefix)
    value -= prefix
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
