"""Unit tests: no sockets, no server processes; Trio's MockClock where time is the subject."""
