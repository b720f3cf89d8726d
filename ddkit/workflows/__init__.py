"""Workflows that join the layer below's strangers: here selection (`ddkit.selectors`) and
judgement (`ddkit.evaluate`) meet, e.g. the active-learning loop judged under a protocol."""
