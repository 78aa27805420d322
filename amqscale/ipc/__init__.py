"""Shared-memory IPC between the user's process and the workers.

``layout`` describes the ring's bytes, ``segment`` creates shared memory that no crash can
leak, ``ring`` holds the one-to-one rings (:class:`~amqscale.ipc.ring.RingWriter`,
:class:`~amqscale.ipc.ring.RingReader`, :class:`~amqscale.ipc.ring.RingPair`), and the C
extension ``_atomics`` gives them ordered words and a fast hot path.
"""
