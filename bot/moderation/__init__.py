"""Keeping public channels safe: rate limits (and, next, input and output checks)."""
