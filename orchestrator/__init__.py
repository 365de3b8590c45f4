"""pdspace orchestrator package."""
