"""T-Library, the cluster's CTI protocol: length-prefixed msgpack maps with the
classic message and attribute names (docs/tlib.md).

``framing`` (frames), ``catalogue`` (messages, attributes, validation),
``errors`` (error codes, typed exceptions), ``session`` (sans-I/O client and
server sessions: handshake, ReferenceID, sequence numbers, ADDP).
"""
