"""Every size limit and queue bound of the bus, in one place, each with the reason for its number.

docs/operations.md (Limits) is the table for operators; docs/protocol.md (Limits) says what a
peer sees when it crosses one. ZeroMQ's high-water marks count messages, not bytes, so each
byte bound below is "messages x the largest message that socket accepts".
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB

# --------------------------------------------------------------------------- message sizes
# ZMQ_MAXMSGSIZE is checked per frame while it is being read: a bigger frame makes libzmq drop
# that one connection before buffering the frame, so no process ever holds it.

# What the agent puts in one fetch_r, at most: a reader pages through a longer stream (the
# request's ``size`` is "up to", so asking for more is not an error, it is clamped).
MAX_FETCH_BYTES = 4 * MiB

# One replay page's event bodies, at most (a single event bigger than this still makes a page
# of its own, so no event is unreachable). Half the old 8 MiB: a page is read, encoded and sent
# whole, and 4 MiB still carries 16 full output chunks per round trip.
REPLAY_PAGE_BYTES = 4 * MiB

# The largest event body the broker accepts from a publisher (its XSUB) or a subscriber takes
# from the broker (SUB). An output chunk is 256 KiB (agent.chunk_bytes) and a cmd_done carries
# two captures of agent.capture_bytes (64 KiB each by default): 1 MiB is 4x the chunk and lets
# an operator raise capture_bytes to about 450 KiB. Everything journalled and replayed is
# bounded by it, so a replay page is at most max(REPLAY_PAGE_BYTES, MAX_EVENT_BYTES) + framing,
# and a subscriber that stopped reading costs the broker at most BROKER_SNDHWM of them.
MAX_EVENT_BYTES = 1 * MiB

# What the agent's settings may ask for, so that every event it publishes fits MAX_EVENT_BYTES:
# a log chunk is chunk_bytes plus an envelope of ids and topic (well under 16 KiB); a cmd_done
# carries two captures of capture_bytes, each with an omission marker, plus the status.
MAX_CHUNK_BYTES = MAX_EVENT_BYTES - 16 * KiB
MAX_CAPTURE_BYTES = (MAX_EVENT_BYTES - 64 * KiB) // 2

# Every request/reply socket (ROUTERs and their DEALERs): 4x the largest legitimate message
# (a 4 MiB fetch_r or replay page plus its framing), and large enough for an exec whose stdin
# is a client or change spec. A query_r of MAX_QUERY_IDS statuses with default captures
# (2 x 64 KiB each) is 12.5 MiB, also inside.
MAX_MSG_BYTES = 16 * MiB

# ZMQ_MAXMSGSIZE is checked on the frame as it travels: under CURVE that is the message boxed in
# a MESSAGE command (its name, a nonce, a flags byte and a 16-byte tag, 33 bytes). Each limit
# above is on the message itself, so the sockets allow this much more.
WIRE_OVERHEAD = 64

# Subscriptions (the inbound side of XPUB and PUB) are topic prefixes; the longest real topic
# (log.<job>.<cmd>.<stream>) is under 300 bytes. XPUB keeps every distinct subscription, so a
# small cap also bounds what one subscriber can make the broker remember per message.
MAX_SUBSCRIPTION_BYTES = 1 * KiB

# --------------------------------------------------------------------------- request caps
# Ids in one query. The orchestrator asks about the commands in flight on one agent (at most
# its slots, a handful); 100 keeps the reply inside MAX_MSG_BYTES (see above) and the agent's
# spool reads short enough not to delay its heartbeats. A query cannot be paged, so more is a
# bad_request rather than a clamp.
MAX_QUERY_IDS = 100

# Events in one replay page; ``limit`` above it is clamped (a client pages anyway).
REPLAY_MAX_EVENTS = 10_000

# --------------------------------------------------------------------------- high-water marks
# A HWM is per connection (per pipe). Inbound HWMs never lose messages: a full pipe stops
# reading that connection and TCP pushes back on its sender. Outbound HWMs on a ROUTER make a
# send fail (ROUTER_MANDATORY), on a PUB/XPUB drop the event for that subscriber.

# ROUTER outbound, per peer: replies (and the master's requests to an agent). A service answers
# a whole drained batch of requests at once, faster than its I/O thread writes them out, so
# the queue must hold what one client may pipeline: 1,000 (test_master sends 200 at once). A
# peer's own I/O thread reads whatever its application does, so the queue stays full only for
# a peer that stopped reading entirely; its replies are small except fetch_r (4 MiB), so such a
# peer costs little unless it also pipelines fetches (an authenticated key; docs/security.md).
SERVER_SNDHWM = 1_000
# The broker's replay ROUTER, per client: pages of up to REPLAY_PAGE_BYTES, one per request
# (a client asks for the next page after reading this one), so 16 x 4 MiB = 64 MiB at most
# for a client that sends requests and never reads; past it the page is dropped and counted.
REPLAY_SNDHWM = 16
# ROUTER inbound, per peer: requests waiting for the service loop (backpressure beyond).
SERVER_RCVHWM = 1_000

# DEALER outbound: a client's requests while its server is away (its own memory; requests are
# small). DEALER inbound: replies, read promptly by the client.
CLIENT_SNDHWM = 100_000
CLIENT_RCVHWM = 1_000

# Broker XPUB outbound, per subscriber. A live subscriber's I/O thread drains this queue
# concurrently with the proxy, so it must absorb one proxy batch (BROKER_BATCH_EVENTS) or a live
# subscriber would lose events in every burst; for a subscriber that stopped reading it fills,
# and then holds at most 256 x MAX_EVENT_BYTES = 256 MiB (64 MiB of 256 KiB output chunks).
# Past it that subscriber alone loses events, and broker.client replays the hole from the
# journal when it reads again.
BROKER_SNDHWM = 256
# Broker XSUB inbound, per publisher: events waiting for the proxy loop (backpressure beyond,
# into the publisher's own queue, so a low number loses nothing). Fills only while the journal
# is slower than the publishers: 256 x 256 KiB chunks is 64 MiB per publisher, 256 MiB at most.
BROKER_RCVHWM = 256
# One proxy batch (events forwarded and handed to the journal per wake-up): half the XPUB queue,
# so a live subscriber's queue holds two batches. The journal writer's queue admits one batch
# past its own byte bound (so that no batch waits forever): a batch's bodies stay under 8 MiB.
BROKER_BATCH_EVENTS = BROKER_SNDHWM // 2
BROKER_BATCH_BYTES = 8 * MiB

# A publisher's own queue while the broker is away, and a subscriber's own queue while its
# application is busy: generous, so a broker restart or a burst of output loses nothing. Both
# hold only this process's (or its pinned broker's) events.
EVENT_HWM = 200_000

# --------------------------------------------------------------------------- dead connections
# ZMTP heartbeats are off on every socket: in libzmq 4.3 the heartbeat timer writes on an
# engine that a reset peer left in error while its input was stopped by a full queue, and the
# process aborts ("Assertion failed: !_io_error (stream_engine_base.cpp:310)"; the subscriber
# side is "_input_stopped (stream_engine_base.cpp:396)"; libzmq issues #3937, #4364, #4767,
# #4841). Dead peers are found instead by the application heartbeats (agent <-> master), by
# request timeouts (clients), and by TCP keepalive on every connection, which the kernel runs:
# an idle connection to a vanished host is closed after IDLE + INTVL x CNT = 25 s, and ZeroMQ
# then reconnects.
TCP_KEEPALIVE_IDLE_S = 10
TCP_KEEPALIVE_INTVL_S = 5
TCP_KEEPALIVE_CNT = 3
