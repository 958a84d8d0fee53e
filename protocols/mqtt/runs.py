"""Runs: many packets (or WebSocket frames) of one shape in a row, handled as one block in C.

A device that floods sends the same kind of packet again and again: one PUBLISH per reading, same topic,
same size. A read of 64 KiB then holds a thousand packets whose headers are byte for byte the same. Stepping
through them in Python costs about a microsecond each; seen as the rows of a matrix (one row per packet,
``numpy`` over the read buffer, no copy) they are checked, unmasked and stripped in a few vector operations.

Everything here is a fast path beside an exact slow one: a helper that cannot decide says so (returns 0,
None or False) and the caller steps packet by packet as before. ``tests/unit/test_runs.py`` checks each helper
against the step-by-step result on random streams.
"""

from __future__ import annotations

from collections.abc import Container

import numpy as np

__all__ = ["RUN_MIN", "RUN_RETRY", "masked_payloads", "rows", "run_length", "same_known_topic", "unmask"]

#: Packets (or frames) of one shape in a row before the vector path pays for itself.
RUN_MIN = 16
#: Packets (or frames) stepped through one by one after a run was looked for and not found.
RUN_RETRY = 32
#: A run whose topic changes more often than once per this many packets is left to the packet-by-packet path.
TOPIC_SPAN = 4


def rows(buf: bytes, start: int, size: int, count: int) -> np.ndarray:
    """``count`` records of ``size`` bytes from ``buf[start:]`` as a (count, size) uint8 matrix (a view)."""
    return np.frombuffer(buf, np.uint8, count * size, start).reshape(count, size)


def run_length(buf: bytes, start: int, n: int, size: int, head: int) -> int:
    """How many records of ``size`` bytes, from ``start`` on and whole within ``buf[:n]``, begin with the
    same ``head`` bytes as the first. The first record must be valid: equal headers then mean equal
    lengths, so the records line up. Returns 0 for fewer than RUN_MIN."""
    count = (n - start) // size
    if count < RUN_MIN:
        return 0
    stop = start + count * size
    for i in range(start, start + head):
        column = buf[i:stop:size]  # byte i of every record: a strided copy in C
        byte = column[:1]
        if column.count(byte) != count:
            count -= len(column.lstrip(byte))  # records from the first that differs on
            if count < RUN_MIN:
                return 0
            stop = start + count * size
    return count


def unmask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``key`` (RFC 6455 §5.3)."""
    n = len(data)
    if not n:
        return b""
    words = -(-n // 4)
    padded = np.zeros(words * 4, np.uint8)
    padded[:n] = np.frombuffer(data, np.uint8)
    out = padded.view(np.uint32) ^ np.frombuffer(key, np.uint32)[0]
    result: bytes = out.view(np.uint8)[:n].tobytes()
    return result


def masked_payloads(buf: bytes, start: int, size: int, count: int, head: int) -> bytes:
    """The payloads of ``count`` masked frames of ``size`` bytes, each with its 4-byte key at
    ``head - 4``, unmasked and joined."""
    m = rows(buf, start, size, count)
    length = size - head
    keys = np.tile(m[:, head - 4 : head], (1, -(-length // 4)))[:, :length]
    result: bytes = (m[:, head:] ^ keys).tobytes()
    return result


def same_known_topic(
    known: Container[bytes], buf: bytes, start: int, body: int, size: int, count: int, v5: bool
) -> bool:
    """True when every PUBLISH of a run (``count`` packets of ``size`` bytes from ``start``, variable
    header at ``body``) has a topic in ``known`` and nothing that could change the answer: no properties
    (so no topic alias) and, for QoS 1 and 2, a packet identifier that is not 0. The run-wide version of
    the per-packet check in ``dataplane._known_topic``. False (decide packet by packet) also when topics of
    another length than the first one's are in the run, or the topic changes more than every TOPIC_SPAN
    packets."""
    hl = body - start
    if size - hl < 2:
        return False
    stop = start + count * size
    tlen = (buf[body] << 8) | buf[body + 1]
    tend = hl + 2 + tlen  # offset after the topic
    pos = tend
    if buf[start] & 6:  # QoS 1 or 2: no packet identifier may be 0
        if pos + 2 > size:
            return False
        high = buf[start + pos : stop : size]
        if high.count(0) and 0 in _column(buf, start + pos, stop, size) | _column(
            buf, start + pos + 1, stop, size
        ):
            return False
        pos += 2
    if v5 and (pos >= size or buf[start + pos : stop : size].count(0) != count):
        return False
    if pos > size:
        return False
    # Where the topic (or its length) differs from the packet before: only varying columns are compared.
    changed: np.ndarray | None = None
    for i in range(start + hl, start + tend):
        column = buf[i:stop:size]
        if column.count(column[:1]) != count:
            values = np.frombuffer(column, np.uint8)
            step = values[1:] != values[:-1]
            changed = step if changed is None else changed | step
    firsts = [0] if changed is None else [0, *(np.flatnonzero(changed) + 1).tolist()]
    if len(firsts) * TOPIC_SPAN > count:
        return False
    for row in firsts:
        at = start + row * size + hl
        if (buf[at] << 8) | buf[at + 1] != tlen or buf[at + 2 : at + 2 + tlen] not in known:
            return False
    return True


def _column(buf: bytes, first: int, stop: int, size: int) -> np.ndarray:
    return np.frombuffer(buf[first:stop:size], np.uint8)
