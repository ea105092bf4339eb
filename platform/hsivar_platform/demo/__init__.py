"""``hsivar demo``: the whole product on one machine — data, training, evaluation, batch, Serve, report."""

from hsivar_platform.demo.run import FULL, QUICK, DemoPlan, DemoResult, find_config, run_demo

__all__ = ["FULL", "QUICK", "DemoPlan", "DemoResult", "find_config", "run_demo"]
