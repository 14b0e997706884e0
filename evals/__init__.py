"""Scenario suites and baselines that measure how well robopt does its job."""
