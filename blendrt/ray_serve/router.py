"""ConversationAffinityRouter: Ray Serve's request-router interface (ray.serve.request_router)
routing each conversation to the replica that served it, so every member's prefix cache and
the reply-id memory for that conversation (both live in the replica's process) keep hitting.

Requests to the blend replicas carry the conversation key as the `conversation` keyword (the
ingress computes it: blendrt.ray_serve.keys). The router ranks the live replicas by
rendezvous hash of the key (blendrt.ray_serve.placement) and lets the home replica take it
unless its queue is more than `max_imbalance` longer than the shortest; then the key's next
replica within the bound does. The queues compared are the requests this router has in
flight at each replica (counted as Ray sends and completes them: no probe on the request's
path; with several ingress replicas each balances its own share). Ray then sends to the
first rank whose queue has room (max_ongoing_requests), backing off while none has.
Requests without a key get Ray's power of two choices. A `replica` keyword pins a request
to one replica (per-replica /metrics).

Why not Ray Serve LLM's PrefixCacheAffinityRouter: it matches the request's text against a
prefix tree held in one detached actor (a blocking call per request) and, at its default
imbalanced_threshold of infinity, never balances; conversations sharing a long system prompt
all match the same replica. A conversation key needs no shared state: every ingress replica
computes the same placement, a dead replica's conversations each move to their own next
replica, and a new replica takes only its share.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from blendrt.ray_serve import registry
from blendrt.ray_serve.placement import DEFAULT_MAX_IMBALANCE, bounded_order, rank

if TYPE_CHECKING:
    from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica

try:
    from ray.serve.request_router import RequestRouter
except ImportError:  # NOTE: a runtime-only install imports every module; this class needs Ray
    RequestRouter = object  # type: ignore[assignment,misc]

CONVERSATION_KWARG = "conversation"
REPLICA_KWARG = "replica"


def _kwarg(pending_request: PendingRequest | None, name: str) -> Any:
    if pending_request is None:
        return None
    return (pending_request.kwargs or {}).get(name)


class ConversationAffinityRouter(RequestRouter):
    """Conversation-affine routing with a bounded-load fallback (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # requests this router has sent to each replica and not seen end: the load the
        # bounded-load rule compares (no probe on the request's path)
        self._ongoing: dict[ReplicaID, int] = {}
        super().__init__(*args, **kwargs)

    def initialize_state(self, max_imbalance: int = DEFAULT_MAX_IMBALANCE, **_: Any) -> None:
        if max_imbalance < 0:
            raise ValueError(f"max_imbalance must be >= 0, got {max_imbalance}")
        self.max_imbalance = max_imbalance
        self.spilled = 0  # requests that left their home replica for load
        self.routed = 0
        deployment = self._deployment_id
        if deployment is not None:
            registry.register(deployment.app_name, deployment.name, self)

    def replicas(self) -> list[RunningReplica]:
        return list(self.curr_replicas.values())

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        self._ongoing[replica_id] = self._ongoing.get(replica_id, 0) + 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        # NOTE: Ray calls this exactly once per request sent (done, failed or cancelled).
        if self._ongoing.get(replica_id, 0) > 0:
            self._ongoing[replica_id] -= 1

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id for r in replicas}
        self._ongoing = {rid: n for rid, n in self._ongoing.items() if rid in live}

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        pinned = _kwarg(pending_request, REPLICA_KWARG)
        if pinned is not None:
            # NOTE: [] while the replica is gone; the caller bounds its wait.
            return [[by_id[pinned]]] if pinned in by_id else []
        key = _kwarg(pending_request, CONVERSATION_KWARG)
        if not key or len(candidate_replicas) == 1:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        ranked = [by_id[u] for u in rank(str(key), sorted(by_id))]
        lens = {r.replica_id: self._ongoing.get(r.replica_id, 0) for r in ranked}
        order = bounded_order([r.replica_id for r in ranked], lens, self.max_imbalance)
        self.routed += 1
        if order[0] != ranked[0].replica_id:
            self.spilled += 1
        replicas = {r.replica_id: r for r in ranked}
        # One replica per rank: Ray tries them in order, each if its queue has room.
        return [[replicas[rid]] for rid in order]
