"""Helpers shared by the tests, no tests: import each from the module named for what it holds.

server (the real server in a test's nursery, schema-checking and stalled clients), checks
(schema checks of server messages), waits (``eventually``, ``wait_until``), logs, events
(encoded server events), engine (scripted sources), commands and network (subprocesses,
ports), browser (Chromium and a server process), tokens, paths, lanes and instruments (the
server's insides), fake_runtimes (Ollama/OpenAI on loopback), proxy (network cuts),
peer_process (clients in a process of their own).
"""
