"""Link contention: concurrent transfers on a link share its bandwidth.

Each transfer crosses a path of links; its rate is the smallest fair share
(bandwidth / transfers on the link) along the path, recomputed whenever a transfer
starts or ends. A transfer's link latency is paid once, before its bytes flow.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from migration.cost import Link


@dataclass
class Transfer:
    key: object
    remaining: float
    path: tuple[str, ...]
    ready_s: float
    rate: float = 0.0


@dataclass
class LinkPool:
    links: dict[str, Link]
    active: dict[object, Transfer] = field(default_factory=dict)
    clock: float = 0.0

    def start(self, key, nbytes: float, path: tuple[str, ...], now: float, overhead_s: float = 0.0) -> None:
        unknown = [name for name in path if name not in self.links]
        if unknown:
            raise ValueError(f"transfer {key!r}: unknown links {unknown}")
        self._advance(now)
        latency = max((self.links[name].latency_s for name in path), default=0.0)
        self.active[key] = Transfer(key, float(nbytes), path, now + latency + overhead_s)
        self._rebalance()

    def cancel(self, key, now: float) -> float:
        """Stop a transfer; returns the bytes it had left."""
        self._advance(now)
        transfer = self.active.pop(key)
        self._rebalance()
        return transfer.remaining

    def finish(self, key, now: float) -> None:
        self._advance(now)
        del self.active[key]
        self._rebalance()

    def next_completion(self) -> tuple[float, object] | None:
        best = None
        for transfer in self.active.values():
            start = max(transfer.ready_s, self.clock)
            done = start + (transfer.remaining / transfer.rate if transfer.remaining > 0 else 0.0)
            if best is None or done < best[0]:
                best = (done, transfer.key)
        return best

    def _advance(self, now: float) -> None:
        for transfer in self.active.values():
            flowing = max(0.0, now - max(self.clock, transfer.ready_s))
            transfer.remaining = max(0.0, transfer.remaining - flowing * transfer.rate)
        self.clock = max(self.clock, now)

    def _rebalance(self) -> None:
        users: dict[str, int] = {}
        for transfer in self.active.values():
            for name in transfer.path:
                users[name] = users.get(name, 0) + 1
        for transfer in self.active.values():
            transfer.rate = min((self.links[n].bandwidth / users[n] for n in transfer.path), default=float("inf"))
