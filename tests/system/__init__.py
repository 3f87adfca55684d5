"""System tests: a real browser, the benchmark's mechanics, the documents against the code."""
