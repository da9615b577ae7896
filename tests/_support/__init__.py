"""Helpers the test modules share (no tests here): the servers a test needs
(``servers``) and one way to run SQL behind a store's back (``sql``).

What a user of sessionvisor could use in their own tests (a free port,
waiting for a condition) lives in ``sessionvisor.testing`` instead.
"""
