"""Small helpers with no paxoskv dependencies, shared by the package and its tests.

- ``paxoskv.util.wait``: the deadline poll (``wait_until``, ``wait_until_async``).
- ``paxoskv.util.ports``: ports free on this machine right now (``free_ports``).

They live in the package, not under tests/, because ``paxoskv cluster``,
``paxoskv bench`` and the chaos campaign use them too.
"""
