"""pdspace core package."""
