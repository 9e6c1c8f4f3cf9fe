"""Generation engines behind one interface: vLLM (colocated, refit) and a reference engine for tests."""
