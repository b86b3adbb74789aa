"""The scripted-socket load generator behind ``osmium-gateway loadtest``.

``script`` is what one socket does (connect, initialize, authenticate, a paced request loop,
reconnects), ``runner`` spreads the sockets over the ramp, stops them and closes every one, and
``report`` keeps the counters and histograms and prints or writes the result.
"""

from gateway.loadtest.report import Stats, build_report, format_report
from gateway.loadtest.runner import LoadConfig, run_load
from gateway.loadtest.script import parse_mix

__all__ = ["LoadConfig", "Stats", "build_report", "format_report", "parse_mix", "run_load"]
