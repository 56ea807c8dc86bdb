"""The analytic demo, apart from the library's core: a ring of Gaussians as the teacher
([`analytic`][scoredistill.demo.analytic]) and the ``scoredistill demo`` run ([`run`][scoredistill.demo.run])."""

from .analytic import GaussianMixture as GaussianMixture
from .run import DemoReport as DemoReport
from .run import DemoResult as DemoResult
from .run import demo_failures as demo_failures
from .run import run_demo as run_demo
from .run import run_demo_report as run_demo_report

__all__ = ["DemoReport", "DemoResult", "GaussianMixture", "demo_failures", "run_demo", "run_demo_report"]
