"""Search engines behind one ask/tell interface; each registers itself by name.

The search loop only sees `Engine`; DEAP's globals stay inside deap_engine.py.
"""

from evo.search.engines.base import ENGINES, Engine, Problem, Request, Score, make_engine

__all__ = ["ENGINES", "Engine", "Problem", "Request", "Score", "make_engine"]
