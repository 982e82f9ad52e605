"""The traffic node's stream relay (DESIGN.md §2).

* ``hub`` — the relay core: publishers, viewers, outboxes, skipping, stall drops (pure);
* ``upgrade`` — the raw ``atlas-stream/1`` data plane (HTTP ``Upgrade`` on the node's
  HTTPS port, then ``atlas.protocol.frames`` back to back);
* ``websocket`` — the same over WebSocket, for browsers;
* ``endpoint`` — the node feature: token check, routing to either transport, sweeper;
* ``metrics`` — Prometheus metrics read from the hub's counters;
* ``client`` — publishing and viewing from the customer and representative clients.
"""
