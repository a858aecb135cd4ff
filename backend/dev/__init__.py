"""Developer tooling: the demo and a local Label Studio for it and the end-to-end tests."""
