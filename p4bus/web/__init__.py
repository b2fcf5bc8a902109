"""`p4bus web`: the dashboard, one more client of the bus (nothing in the orchestrator waits on it).

``tokens``: people's login tokens, hashed in a 0600 file. ``people``: who is asking (session
cookie or a trusted proxy's header), sessions and CSRF tokens. ``journal``/``feed``: a job's
events read from every broker's journal, woken by the live streams, as SSE messages whose ids
are journal positions. ``bus``: the orchestrator and masters, called from threads; the live jobs/agents
watch. ``streams``: the event streams and downloads. ``views``: what pages show, as pure
functions. ``app``: logins, pages and actions.
"""
