"""The evaluator: trains students on a train set under a named protocol and reports accuracy
beside the random real subset at the same budget. It never imports a synthesizer or selector."""

from ddkit.evaluate.api import evaluate
from ddkit.evaluate.card import ResultCard
from ddkit.evaluate.protocols import PROTOCOLS, Protocol, get_protocol

__all__ = ["PROTOCOLS", "Protocol", "ResultCard", "evaluate", "get_protocol"]
