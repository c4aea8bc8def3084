"""Chat grounded in the catalog: what a message names (`finder`), factual questions and
their catalog answers (`questions`), the check of a streamed reply (`check`), and the
step of the reply pipeline that ties them together (`service`). See docs/grounding.md."""
