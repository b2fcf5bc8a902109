"""One way to start a p4bus on one machine: `p4bus up`, `p4bus demo`, the benches and the tests.

``stack``: a settings tree, written as TOML per start, services as child processes with their
logs in files, readiness waits, kill and restart of one service, clean stop.
``workspaces``: p4sim depots seeded for jobs, with the agent's and the orchestrator's settings.
``netns``: hosts as network namespaces on a private switch (root only), whose links can be cut
and impaired; ``Stack.placement`` starts a service on one of them.
"""
