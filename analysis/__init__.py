"""pdspace analysis package."""
