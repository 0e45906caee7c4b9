"""Provider normalizers: upstream bytes in, unified events (protocol/events.py) out.

See :mod:`protocol.normalizers.base` for the contract. One module per wire format.
"""
