"""An Anthropic Messages API simulator with a hidden-truth workload, for tests, demos and benchmarks."""

from service.simulator.config import SimulatorConfig
from service.simulator.server import CallRecord, Simulator, serve_forever

__all__ = ["CallRecord", "Simulator", "SimulatorConfig", "serve_forever"]
