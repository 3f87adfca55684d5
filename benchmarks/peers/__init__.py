"""Peers written for the benchmark: the same frame stream and heartbeats on other stacks."""
