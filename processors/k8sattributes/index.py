"""The pod cache: one writer (a source's thread), lock-free readers (the tick).

A :class:`PodStore` holds the pods a source knows and the tombstones of pods deleted a
moment ago. Every change publishes a new immutable :class:`PodIndex` by replacing one
attribute, so the tick reads a consistent snapshot with plain dict lookups and never
waits for the network thread. A change that changes nothing publishes nothing: the
tick then keeps its per-container results.

A deleted pod (a DELETED event, or gone from a kubelet poll or a relist) stays in the
index as a tombstone for ``tombstone_ttl`` seconds: the processes of its containers end
around that moment, and their last interval must still carry the pod's names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .metadata import ContainerMeta, PodMeta


@dataclass(frozen=True, slots=True)
class PodIndex:
    """An immutable snapshot: container id -> (pod, container), pod uid -> pod."""

    containers: dict[str, tuple[PodMeta, ContainerMeta]]
    pods: dict[str, PodMeta]
    live: int  # pods that are not tombstones
    tombstones: int


EMPTY_INDEX = PodIndex({}, {}, 0, 0)


class PodStore:
    """The pods of one source, with tombstones; publishes :attr:`index`."""

    def __init__(self, tombstone_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.tombstone_ttl = tombstone_ttl
        self.clock = clock
        self.index: PodIndex = EMPTY_INDEX
        self._pods: dict[str, PodMeta] = {}
        self._tombstones: dict[str, tuple[PodMeta, float]] = {}  # uid -> (pod, expiry)

    def __len__(self) -> int:
        return len(self._pods)

    def replace(self, pods: Iterable[PodMeta]) -> bool:
        """The full set of pods (a list or a poll); pods not in it become tombstones."""
        fresh = {p.uid: p for p in pods}
        expiry = self.clock() + self.tombstone_ttl
        gone = [uid for uid in self._pods if uid not in fresh]
        changed = self._expire() or bool(gone) or fresh != self._pods
        for uid in gone:
            self._tombstones[uid] = (self._pods[uid], expiry)
        for uid in fresh:
            self._tombstones.pop(uid, None)
        self._pods = fresh
        if changed:
            self._publish()
        return changed

    def upsert(self, pod: PodMeta) -> bool:
        """A pod added or modified; True if the index changed."""
        changed = self._expire()
        if self._pods.get(pod.uid) != pod:
            self._pods[pod.uid] = pod
            self._tombstones.pop(pod.uid, None)
            changed = True
        if changed:
            self._publish()
        return changed

    def delete(self, uid: str) -> bool:
        """A pod deleted: a tombstone until ``tombstone_ttl`` has passed."""
        changed = self._expire()
        pod = self._pods.pop(uid, None)
        if pod is not None:
            self._tombstones[uid] = (pod, self.clock() + self.tombstone_ttl)
            changed = True
        if changed:
            self._publish()
        return changed

    def expire(self) -> bool:
        """Drop tombstones past their time; True if the index changed."""
        changed = self._expire()
        if changed:
            self._publish()
        return changed

    def _expire(self) -> bool:
        if not self._tombstones:
            return False
        now = self.clock()
        old = [uid for uid, (_, until) in self._tombstones.items() if until <= now]
        for uid in old:
            del self._tombstones[uid]
        return bool(old)

    def _publish(self) -> None:
        containers: dict[str, tuple[PodMeta, ContainerMeta]] = {}
        pods: dict[str, PodMeta] = {}
        # tombstones first: a live pod wins where both name the same container or uid
        everyone = [p for p, _ in self._tombstones.values()]
        everyone.extend(self._pods.values())
        for pod in everyone:
            pods[pod.uid] = pod
            for alias in pod.aliases:
                pods[alias] = pod
            for c in pod.containers:
                containers[c.id] = (pod, c)
        self.index = PodIndex(containers, pods, len(self._pods), len(self._tombstones))
