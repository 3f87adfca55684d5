"""End-to-end tests: a real Hypercorn server on a free loopback port, real clients."""
