"""Prompt assembly: what the model reads for one reply, built from what memory holds.

`build` fills a token-budgeted context window; `window` reads memory for it (turns,
recall, facts, summary) in one round trip; `profile` renders the profile slot. Memory
(`memory/`) only stores; nothing here writes to it.
"""
