"""``fedge demo``: the whole edge/cloud loop on one machine (see ``fedge.demo.runner``)."""

from fedge.demo.plan import DemoPlan, SitePlan, plan_sites
from fedge.demo.runner import DemoOptions, run_demo

__all__ = ["DemoOptions", "DemoPlan", "SitePlan", "plan_sites", "run_demo"]
